"""Loading a pipeline (hub id or local folder), and a tiny one built from configs.

A diffusers text-to-image pipeline of any family of :mod:`fdu.sd.families` (SD 1.x/2.x, SDXL, SD3,
FLUX) loads through :func:`load_pipeline`, its class read from ``model_index.json``: ε- or v-prediction
from its scheduler config, flow matching for SD3 and FLUX. Nothing is downloaded when
``HF_HUB_OFFLINE=1`` (or ``local_files_only=True``); a model that is neither a local folder nor in the
hub cache raises :class:`ModelNotAvailableError` with what to do.

:func:`build_tiny_pipeline` writes a complete, loadable pipeline folder with random weights (a two-block
UNet, a small VAE, a two-layer CLIP text encoder and a character-level CLIP tokenizer), in about a
second, for tests and CPU runs. Its images are noise; its shapes and module names are those of the real
thing (``...attn2.to_k`` / ``.to_v`` are the cross-attention key and value projections).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch


class ModelNotAvailableError(FileNotFoundError):
    """The model is neither a local pipeline folder nor in the local hub cache (and we are offline)."""


def _byte_alphabet() -> list:
    """The 256 printable characters CLIP's byte-level BPE uses for the bytes 0..255."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_char_tokenizer(folder) -> Path:
    """A CLIP tokenizer with a character-level vocabulary (no merges): every byte, alone or ending a
    word, plus the start and end tokens. Written as vocab.json + merges.txt (any transformers
    version loads it)."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = _byte_alphabet()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + len(chars) for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    tok.save_pretrained(str(folder))
    return folder


#: (UNet, VAE, text encoder) sizes of each architecture ``build_random_pipeline`` builds
ARCHITECTURES = {
    # a CPU-sized pipeline for tests and demos
    "tiny": (dict(block_out_channels=(32, 64), layers_per_block=1,
                  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                  attention_head_dim=2, norm_num_groups=8),
             dict(block_out_channels=(16, 16, 32, 32), norm_num_groups=8, layers_per_block=1),
             dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)),
    # Stable Diffusion 1.x: the UNet (860 M parameters), its VAE and a CLIP ViT-L/14-sized text encoder
    "sd1": (dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
                 attention_head_dim=8),
            dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2),
            dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)),
}


def build_random_pipeline(folder=None, *, architecture: str = "tiny", seed: int = 0,
                          prediction_type: str = "epsilon", sample_size: int | None = None):
    """A StableDiffusionPipeline with random weights (seeded), built from configs (nothing is
    downloaded): ``architecture`` "tiny" (CPU-sized) or "sd1" (Stable Diffusion 1.x sizes, for
    speed and memory checks on a GPU; its tokenizer is the small character tokenizer). With
    ``folder``, it is also saved there (``StableDiffusionPipeline.from_pretrained(folder)`` loads
    it). ``sample_size``: the latent size (images are 8 times larger; default 32 tiny, 64 sd1)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {tuple(ARCHITECTURES)}, got {architecture!r}")
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}")
    unet_cfg, vae_cfg, text_cfg = ARCHITECTURES[architecture]
    sample_size = sample_size or (32 if architecture == "tiny" else 64)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=sample_size, in_channels=4, out_channels=4, **unet_cfg)
    n = len(vae_cfg["block_out_channels"])
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, down_block_types=("DownEncoderBlock2D",) * n,
                        up_block_types=("UpDecoderBlock2D",) * n, sample_size=sample_size * 8,  # 8x, as SD's
                        **vae_cfg)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(str(write_char_tokenizer(tmp)))
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **text_cfg))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                              prediction_type=prediction_type)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    if folder is not None:
        pipe.save_pretrained(str(folder))
        write_char_tokenizer(Path(folder) / "tokenizer")  # vocab.json + merges.txt beside tokenizer.json
    return pipe


def build_tiny_pipeline(folder=None, *, seed: int = 0, prediction_type: str = "epsilon",
                        sample_size: int = 32):
    """A tiny StableDiffusionPipeline with random weights (see :func:`build_random_pipeline`)."""
    return build_random_pipeline(folder, architecture="tiny", seed=seed, prediction_type=prediction_type,
                                 sample_size=sample_size)


def build_sd1_pipeline(folder=None, *, seed: int = 0):
    """A Stable Diffusion 1.x-architecture pipeline with random weights, 512 px (about 1.07 B
    parameters, 4.3 GB in float32): for the GPU check (``benchmarks/gpu_check.sh``)."""
    return build_random_pipeline(folder, architecture="sd1", seed=seed)


def load_pipeline(model: str, *, dtype: torch.dtype = torch.float32, device: str = "cpu",
                  local_files_only: bool | None = None, progress: bool = True):
    """A pipeline of a supported family (:data:`fdu.sd.families.FAMILIES`) from a hub id or a local folder,
    safety checker off, progress bars off, on ``device`` in ``dtype``; components saved as absent (SD3
    without T5) stay absent. Offline (``HF_HUB_OFFLINE=1``, the default on machines without a
    hub) only local folders and the hub cache are used. ``progress=False``: no loading bars either."""
    if not progress:
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
        try:
            return load_pipeline(model, dtype=dtype, device=device, local_files_only=local_files_only)
        finally:
            diffusers_logging.enable_progress_bar()
            transformers_logging.enable_progress_bar()
    from .families import family_of_class, pipeline_class

    if not model or not str(model).strip():
        raise ValueError("model must be a hub id (e.g. 'CompVis/stable-diffusion-v1-4') or a local "
                         "pipeline folder")
    if local_files_only is None:
        local_files_only = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    path = Path(model).expanduser()
    looks_local = path.exists() or str(model).startswith((".", "/", "~")) or str(model).count("/") > 1
    if looks_local and not (path / "model_index.json").is_file():
        raise ModelNotAvailableError(
            f"{model!r} is not a diffusers pipeline folder (no model_index.json there). Pass a folder "
            "written by save_pretrained, a hub id, or build a tiny one with `python -m fdu tiny-pipeline DIR`")
    index = _model_index(model, path, looks_local, local_files_only)
    family = family_of_class(str(index.get("_class_name")))   # an unsupported class: a clear error, first
    absent = {name: None for name, value in index.items() if isinstance(value, list) and value and value[0] is None}
    if family == "sd":
        absent.update(safety_checker=None, requires_safety_checker=False)
    try:
        pipe = pipeline_class(family).from_pretrained(
            str(path) if looks_local else model, dtype=dtype, local_files_only=local_files_only, **absent)
    except Exception as err:  # diffusers, transformers and safetensors each raise their own kinds
        if looks_local:
            raise ModelNotAvailableError(
                f"cannot load the pipeline folder {path}: a component is missing or damaged "
                f"({type(err).__name__}: {str(err)[:300]}). Write it again (save_pretrained, `python -m fdu "
                "mini-sd DIR`, `python -m fdu tiny-pipeline DIR`) or copy it again") from err
        if not isinstance(err, (OSError, ValueError)):
            raise
        raise _not_in_cache(model, local_files_only, err) from err
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _not_in_cache(model: str, local_files_only: bool, err: Exception) -> ModelNotAvailableError:
    return ModelNotAvailableError(
        f"cannot load {model!r}: it is not a local folder and not in the local hub cache"
        f"{' (offline: HF_HUB_OFFLINE=1)' if local_files_only else ''}. Download it once on a machine "
        "with access (`huggingface-cli download ID`) and pass the folder, or build a tiny pipeline "
        f"for a CPU check with `python -m fdu tiny-pipeline DIR`. ({type(err).__name__}: {str(err)[:200]})")


def save_pipeline(pipe, folder):
    """``pipe.save_pretrained(folder)`` without diffusers' warning for each component saved as absent (SD3
    without T5: "text_encoder_3=None ... cannot be saved"), which ``load_pipeline`` restores as absent."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        pipe.save_pretrained(str(folder))
    finally:
        diffusers_logging.set_verbosity(level)


def _model_index(model: str, path: Path, looks_local: bool, local_files_only: bool) -> dict:
    """The pipeline's model_index.json (a folder's, or a hub id's from the cache or the hub)."""
    if looks_local:
        try:
            return json.loads((path / "model_index.json").read_text())
        except (OSError, ValueError) as err:
            raise ModelNotAvailableError(f"cannot read {path / 'model_index.json'}: {err}") from err
    from diffusers import DiffusionPipeline

    try:
        return dict(DiffusionPipeline.load_config(model, local_files_only=local_files_only))
    except (OSError, ValueError) as err:
        raise _not_in_cache(model, local_files_only, err) from err


def prediction_type(pipe) -> str:
    """"epsilon", "v_prediction" or "sample" (UNets, from the scheduler config), "flow" (SD3, FLUX)."""
    from .families import prediction_type as of

    return of(pipe)


def training_scheduler(pipe, latent_hw: tuple[int, int] | None = None):
    """The DDPMScheduler with the pipeline's noise schedule and prediction type (for x_t = add_noise), or
    the flow-matching schedule of SD3 and FLUX (:func:`fdu.sd.families.training_schedule`)."""
    from .families import training_schedule

    return training_schedule(pipe, latent_hw)


def build_tiny_clip(folder, *, seed: int = 0) -> Path:
    """A tiny CLIP model and processor with random weights, saved to ``folder``: stands in for
    OpenAI's CLIP in CPU checks of the evaluation (its scores mean nothing)."""
    import tempfile

    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(str(write_char_tokenizer(tmp)))
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    model = CLIPModel(config)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    folder = Path(folder)
    model.save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    return folder
