"""Stable Diffusion on a tiny pipeline built from configs (CPU, no model hub): the command line trains,
checkpoints, resumes, writes a loadable pipeline; accelerate with two CPU processes; the frozen-reference
trick; evaluation; clear errors."""
import copy
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from fdu.cli import main
from fdu.sd import build_prompts, load_pipeline
from fdu.sd.pipeline import build_random_pipeline
from fdu.sd.prompts import read_prompt_file

TINY = dict(sample_size=8)


def unlearn_args(model, out, *extra):
    return ["unlearn", "--model", str(model), "--target", "van gogh", "--anchor", "painting",
            "--divergence", "hellinger", "--output", str(out), "--quiet", "--batch-size", "2",
            "--gradient-accumulation-steps", "1", "--anchor-steps", "2", "--lr", "1e-3", *extra]


def test_tiny_pipeline_loads_and_generates(tiny):
    pipe = load_pipeline(str(tiny))
    image = pipe("a painting", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)
    names = [n for n, _ in pipe.unet.named_parameters() if ".attn2.to_k." in n or ".attn2.to_v." in n]
    assert names and all(n.endswith(".weight") for n in names)


def test_cli_trains_checkpoints_resumes_and_writes_a_loadable_pipeline(tiny, tmp_path):
    cache = tmp_path / "anchors"
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(unlearn_args(tiny, full, "--steps", "4", "--checkpoint-every", "2", "--cache-dir", str(cache))) == 0
    assert sorted(p.name for p in (full / "checkpoints").glob("step_*")) == ["step_2.safetensors", "step_4.safetensors"]
    summary = json.loads((full / "summary.json").read_text())
    assert summary["anchor_images"] == 8  # steps x batch: no more anchor images than the run uses
    # interrupted after step 2 (the later checkpoint and the outputs gone), then resumed: the same weights
    import shutil

    shutil.copytree(full, part)
    for name in ("checkpoints/step_4.safetensors", "unlearned.safetensors", "summary.json"):
        (part / name).unlink()
    shutil.rmtree(part / "pipeline")
    assert main(unlearn_args(tiny, part, "--steps", "4", "--checkpoint-every", "2", "--cache-dir", str(cache),
                             "--resume")) == 0
    assert json.loads((part / "summary.json").read_text())["resumed_from"].endswith("step_2.safetensors")
    a, b = load_file(str(full / "unlearned.safetensors")), load_file(str(part / "unlearned.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    base = load_pipeline(str(tiny))
    assert any(not torch.equal(a[k], base.unet.get_parameter(k[len("unet."):])) for k in a)  # it changed
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(full / "pipeline"), safety_checker=None,
                                                   requires_safety_checker=False)
    assert pipe("van gogh", num_inference_steps=2).images[0].size == (64, 64)
    k = next(iter(a))
    assert torch.equal(pipe.unet.get_parameter(k[len("unet."):]), a[k])
    # without --resume, an existing run is not overwritten
    assert main(unlearn_args(tiny, full, "--steps", "4", "--cache-dir", str(cache))) == 2


def test_variational_and_other_parameter_groups_run(tiny, tmp_path):
    cache = tmp_path / "anchors"
    out = tmp_path / "var"
    assert main(unlearn_args(tiny, out, "--steps", "2", "--variational", "--divergence", "js",
                             "--cache-dir", str(cache))) == 0
    for group, prefix in (("attention", "unet."), ("embedding", "text_encoder.")):
        out = tmp_path / group
        assert main(unlearn_args(tiny, out, "--steps", "2", "--params", group, "--cache-dir", str(cache))) == 0
        names = list(load_file(str(out / "unlearned.safetensors")))
        assert names and all(n.startswith(prefix) for n in names)
    assert main(unlearn_args(tiny, tmp_path / "bf16", "--steps", "2", "--mixed-precision", "bf16",
                             "--cache-dir", str(cache))) == 0


def test_swapped_reference_gives_the_same_losses_as_a_full_frozen_copy(tiny):
    from fdu.sd.train import unlearning_task
    from fdu.unlearn import UnlearnConfig, unlearn

    pipe = load_pipeline(str(tiny))
    targets, anchors = build_prompts("style", "van gogh", "painting")
    latents = torch.randn(8, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    histories = []
    for full_copy in (False, True):
        p = copy.deepcopy(pipe)
        task = unlearning_task(p, targets, anchors, latents)
        if full_copy:
            task.reference = copy.deepcopy(task.model).requires_grad_(False)
        cfg = UnlearnConfig(divergence="squared_hellinger", steps=3, batch_size=2, lr=1e-2, progress=False)
        histories.append(unlearn(task, cfg).history["loss"])
    assert histories[0] == pytest.approx(histories[1], rel=1e-6, abs=1e-9)
    assert histories[0][-1] != histories[0][0]


def test_evaluate_writes_the_table(tiny, tmp_path):
    out = tmp_path / "run"
    assert main(unlearn_args(tiny, out, "--steps", "2")) == 0
    assert main(["evaluate", "--model", str(tiny), "--unlearned", str(out), "--concept", "van gogh",
                 "--retained", "monet", "--clip-model", str(tiny / "clip"), "--steps", "2", "--quiet"]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert set(report["table"]) == {"base", "unlearned"} and report["retained"] == ["monet"]
    assert 0 <= report["table"]["unlearned"]["erased_clip_accuracy"] <= 1
    assert "erased CS" in (out / "eval.md").read_text()


def test_prompts_follow_the_official_templates(tmp_path):
    t, a = build_prompts("style", "van gogh", "painting")
    assert len(t) == len(a) > 10 and all("van gogh" in x for x in t) and "van gogh" not in " ".join(a)
    t, a = build_prompts("style", "van gogh", "salvador dali")
    assert all("salvador dali" in x for x in a)
    t, a = build_prompts("object", "grumpy cat", "cat")
    assert all("grumpy cat" in x for x in t) and all(" cat" in x for x in a)
    t, a = build_prompts("nudity", "nudity", "")
    assert set(a) == {""}
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# only a comment\n")
    with pytest.raises(ValueError, match="empty"):
        read_prompt_file(empty)
    with pytest.raises(ValueError, match="shipped"):
        build_prompts("object", "r2d2", "spaceship")
    with pytest.raises(ValueError, match="style"):
        build_prompts("texture", "van gogh", "painting")


def test_clear_errors_on_the_command_line(tiny, tmp_path, capsys):
    assert main(unlearn_args("someone/not-a-model", tmp_path / "a", "--steps", "2")) == 2
    assert "hub cache" in capsys.readouterr().err
    assert main(unlearn_args(tmp_path / "missing-folder", tmp_path / "a", "--steps", "2")) == 2
    assert "model_index.json" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main(unlearn_args(tiny, tmp_path / "b", "--steps", "2", "--captions", str(empty))) == 2
    assert "empty" in capsys.readouterr().err
    assert main(unlearn_args(tiny, tmp_path / "c", "--steps", "2", "--divergence", "kullback")) == 2
    err = capsys.readouterr().err
    assert "kullback" in err and "squared_hellinger" in err


def test_v_prediction_pipelines_train_too(tmp_path):
    folder = tmp_path / "tiny-v"
    assert main(["tiny-pipeline", str(folder), "--sample-size", "8", "--prediction-type", "v_prediction"]) == 0
    out = tmp_path / "run"
    assert main(unlearn_args(folder, out, "--steps", "2")) == 0
    assert json.loads((out / "summary.json").read_text())["prediction_type"] == "v_prediction"
    # the true reverse-step δ² through the command line: the pipeline's own scheduler gives c_t s_t²
    out = tmp_path / "reverse-step"
    assert main(unlearn_args(folder, out, "--steps", "2", "--normalization", "reverse_step", "--variance", "beta",
                             "--cache-dir", str(tmp_path / "anchors"))) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["normalization"] == "reverse_step" and summary["config"]["variance"] == "beta"
    assert all(torch.isfinite(v).all() for v in load_file(str(out / "unlearned.safetensors")).values())


def test_a_two_process_run_trains_checkpoints_and_resumes_exactly(tiny, tmp_path):
    """accelerate launch with two processes: on a machine without GPUs, --multi_gpu starts them with
    torchrun and fdu joins them over gloo (accelerate's --cpu with several processes needs mpirun)."""
    import shutil

    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    full, part = tmp_path / "full", tmp_path / "part"

    def launch(out, *extra):
        cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "fdu",
               *unlearn_args(tiny, out, "--steps", "4", "--checkpoint-every", "2", "--cache-dir",
                             str(tmp_path / "anchors"), *extra)]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]

    launch(full)
    summary = json.loads((full / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["anchor_images"] == 16  # 4 steps x 2 x 2 processes
    assert (full / "unlearned.safetensors").is_file() and (full / "pipeline" / "model_index.json").is_file()
    assert "rng/generator/1" in load_file(str(full / "checkpoints" / "step_2.safetensors"))  # for an exact resume
    shutil.copytree(full, part)  # as if stopped after the step-2 checkpoint
    for name in ("checkpoints/step_4.safetensors", "unlearned.safetensors", "summary.json"):
        (part / name).unlink()
    launch(part, "--resume")
    a, b = load_file(str(full / "unlearned.safetensors")), load_file(str(part / "unlearned.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_official_border_mask_leaves_the_edges_out(tiny):
    from fdu.sd.train import unlearning_task

    pipe = load_pipeline(str(tiny))
    targets, anchors = build_prompts("style", "van gogh", "painting")
    latents = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    task = unlearning_task(pipe, targets, anchors, latents, mask_border=1)
    assert task.loss_mask.shape == (1, 1, 8, 8) and int(task.loss_mask.sum()) == 36
    assert task.loss_mask[..., 0, :].sum() == 0 and task.loss_mask[..., 1:-1, 1:-1].all()
    with pytest.raises(ValueError, match="mask_border"):
        unlearning_task(pipe, targets, anchors, latents, mask_border=4)


def test_the_sd1_architecture_of_the_gpu_check_has_stable_diffusions_sizes():
    """The random-weight pipeline of benchmarks/gpu_check.sh, built on the meta device (no memory):
    the SD 1.x UNet has 859,520,964 parameters and its VAE 83,653,863."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from fdu.sd.pipeline import ARCHITECTURES

    unet_cfg, vae_cfg, _ = ARCHITECTURES["sd1"]
    with torch.device("meta"):
        unet = UNet2DConditionModel(sample_size=64, in_channels=4, out_channels=4, **unet_cfg)
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, sample_size=512,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            **vae_cfg)
    assert sum(p.numel() for p in unet.parameters()) == 859_520_964
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863
    with pytest.raises(ValueError, match="architecture"):
        build_random_pipeline(architecture="sdxl")
