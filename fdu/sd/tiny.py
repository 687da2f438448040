"""Tiny pipelines of every family, built from configs with random weights (nothing is downloaded), for
CPU tests: ``python -m fdu tiny-pipeline DIR --family sd|sdxl|sd3|flux``.

Their images are noise; their components, module names and call paths are the real ones: SDXL's two
CLIP encoders, pooled embedding and time ids; SD3's MMDiT with two CLIP encoders and a T5 encoder; FLUX's
double- and single-stream blocks, packed latents, T5 + CLIP and the guidance embedding. The T5 tokenizer is
a character-level Unigram model written with ``tokenizers`` (a real T5's is a SentencePiece model).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from .families import check_family


def _clip_tokenizer():
    from transformers import CLIPTokenizer

    from .pipeline import write_char_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        return CLIPTokenizer.from_pretrained(str(write_char_tokenizer(tmp)))


def _t5_tokenizer():
    """A T5 tokenizer (pad 0, eos 1, unk 2) over single characters, as a tokenizers Unigram model."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import T5TokenizerFast

    chars = [chr(c) for c in range(32, 127)] + ["▁"]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(c, -1.0) for c in chars]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                           extra_ids=0, model_max_length=512)


def _clip_text(tokenizer, *, projection: bool, hidden: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                         projection_dim=hidden, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)


def _t5(tokenizer, d_model: int = 32):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=2 * d_model,
                                   num_layers=2, num_heads=2, pad_token_id=0, eos_token_id=1,
                                   decoder_start_token_id=0))


def _vae(*, shift: float | None):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=8, sample_size=32)
    if shift is not None:
        vae.register_to_config(shift_factor=shift, scaling_factor=1.5)
    return vae


def build_sdxl(sample_size: int = 16):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    tok = _clip_tokenizer()
    te, te2 = _clip_text(tok, projection=False), _clip_text(tok, projection=True)
    unet = UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), norm_num_groups=8,
        projection_class_embeddings_input_dim=6 * 8 + te2.config.projection_dim,
        cross_attention_dim=te.config.hidden_size + te2.config.hidden_size)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading", prediction_type="epsilon")
    return StableDiffusionXLPipeline(vae=_vae(shift=None), text_encoder=te, text_encoder_2=te2, tokenizer=tok,
                                     tokenizer_2=tok, unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=True)


def build_sd3(sample_size: int = 16):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tok, t5tok = _clip_tokenizer(), _t5_tokenizer()
    te, te2, t5 = _clip_text(tok, projection=True), _clip_text(tok, projection=True), _t5(t5tok, d_model=64)
    transformer = SD3Transformer2DModel(
        sample_size=sample_size, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=64, caption_projection_dim=32, pooled_projection_dim=64,
        pos_embed_max_size=sample_size // 2)
    return StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=_vae(shift=0.1), text_encoder=te, tokenizer=tok, text_encoder_2=te2,
                                    tokenizer_2=tok, text_encoder_3=t5, tokenizer_3=t5tok)


def build_flux(sample_size: int = 16):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tok, t5tok = _clip_tokenizer(), _t5_tokenizer()
    te, t5 = _clip_text(tok, projection=False), _t5(t5tok)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=(4, 6, 6))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(transformer=transformer, scheduler=scheduler, vae=_vae(shift=0.1), text_encoder=te,
                        tokenizer=tok, text_encoder_2=t5, tokenizer_2=t5tok)


def build_tiny_family_pipeline(folder=None, *, family: str = "sd", seed: int = 0, sample_size: int = 16):
    """A tiny pipeline of ``family`` (see the module docstring), random weights seeded by ``seed``; saved
    to ``folder`` when given (the family's ``from_pretrained(folder)`` loads it). ``sample_size``: the latent
    side (images are twice as large: the tiny VAE halves once); FLUX and SD3 need it even."""
    from .pipeline import build_tiny_pipeline, write_char_tokenizer

    check_family(family)
    if family == "sd":
        return build_tiny_pipeline(folder, seed=seed, sample_size=sample_size)
    if family in ("sd3", "flux") and sample_size % 2:
        raise ValueError(f"{family} packs 2x2 latent patches: sample_size must be even, got {sample_size}")
    torch.manual_seed(seed)
    pipe = {"sdxl": build_sdxl, "sd3": build_sd3, "flux": build_flux}[family](sample_size)
    pipe.set_progress_bar_config(disable=True)
    if folder is not None:
        pipe.save_pretrained(str(folder))
        for sub in ("tokenizer", "tokenizer_2"):   # vocab.json + merges.txt beside tokenizer.json
            if type(getattr(pipe, sub, None)).__name__ == "CLIPTokenizer":
                write_char_tokenizer(Path(folder) / sub)
    return pipe
