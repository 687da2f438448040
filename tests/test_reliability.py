"""A run never writes NaN weights, never loses work to a late error, never silently mixes two runs:
each failure a new user met on the tiny pipeline (bad input, faults, a killed process) has a test."""
import json
import os
import random
import shutil
import signal
import time

import pytest
import torch
from diffusers import DDPMScheduler
from safetensors.torch import load_file, save_file

from fdu.checkpoints import latest_good_checkpoint, load_checkpoint, save_checkpoint
from fdu.cli import main
from fdu.errors import CorruptCheckpointError, NonFiniteError, ResumeMismatchError
from fdu.unlearn import AnchorBatch, SingleProcess, Task, UnlearnConfig, unlearn

# --- the loop, on a linear "denoiser" (milliseconds per step) -----------------------------------------


class BlowUp(torch.autograd.Function):
    """Identity forward; its backward turns the gradient into inf/NaN (a finite loss, overflowing gradients)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


def linear_task(blow_up_after_calls=None, scale=1.0):
    torch.manual_seed(0)
    calls = {"n": 0}

    def forward(model, x_t, t, cond):
        calls["n"] += 1
        out = model(x_t) + cond
        return BlowUp.apply(out) if blow_up_after_calls is not None and calls["n"] > blow_up_after_calls else out

    def sample(n, gen):
        return AnchorBatch(scale * torch.randn(n, 4, generator=gen), 1.0, 0.0)

    return Task(model=torch.nn.Linear(4, 4), forward=forward, sample_anchor_x0=sample,
                scheduler=DDPMScheduler(num_train_timesteps=20))


def files_are_finite(folder) -> bool:
    """Every floating tensor of every .safetensors file under ``folder`` is finite."""
    for path in list(folder.rglob("*.safetensors")):
        if any(v.is_floating_point() and not torch.isfinite(v).all() for v in load_file(str(path)).values()):
            return False
    return True


def test_overflowing_gradients_stop_the_run_before_the_update(tmp_path):
    task = linear_task(blow_up_after_calls=2 * 3)  # two forward calls per step: gradients inf from step 4 on
    cfg = UnlearnConfig(steps=6, batch_size=8, lr=1e-2, checkpoint_every=2, checkpoint_dir=str(tmp_path),
                        log_every=1, progress=False)
    after = {}

    def record(step, task):
        after[step] = task.model.weight.detach().clone()

    with pytest.raises(NonFiniteError, match=r"gradients at step 4 .*step_2\.safetensors"):
        unlearn(task, cfg, callback=record)
    assert max(after) == 3 and not torch.equal(after[3], after[2])
    assert torch.equal(task.model.weight, after[3])  # step 4's update was never applied
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_2.safetensors"]
    assert files_are_finite(tmp_path)


def test_an_update_that_overflows_the_parameters_stops_the_run_and_writes_nothing(tmp_path):
    task = linear_task(scale=1e3)  # gradients of order 1e3: one SGD step of lr 1e37 overflows float32
    cfg = UnlearnConfig(steps=3, batch_size=8, lr=1e37, optimizer="sgd", checkpoint_every=1,
                        checkpoint_dir=str(tmp_path), progress=False)
    with pytest.raises(NonFiniteError, match="made parameters inf or NaN"):
        unlearn(task, cfg)
    assert not list(tmp_path.glob("step_*"))


def test_a_checkpoint_with_a_non_finite_tensor_is_refused(tmp_path):
    w = torch.nn.Parameter(torch.tensor([1.0, float("nan")]))
    opt = torch.optim.Adam([w])
    with pytest.raises(NonFiniteError, match="param/0"):
        save_checkpoint(tmp_path / "step_1.safetensors", step=1, params=[w], optimizer=opt,
                        generator=torch.Generator(), history={}, metrics=[])
    assert not list(tmp_path.iterdir())


def test_resuming_applies_a_new_learning_rate_and_refuses_a_new_divergence(tmp_path):
    def run(steps, **kw):
        options = dict(batch_size=8, lr=1e-2, checkpoint_every=2, checkpoint_dir=str(tmp_path), progress=False)
        cfg = UnlearnConfig(steps=steps, **{**options, **kw})
        return cfg, linear_task()

    cfg, task = run(2)
    unlearn(task, cfg)
    cfg, task = run(4, lr=1e-3)
    result = unlearn(task, cfg, resume_from=tmp_path / "step_2.safetensors")
    assert result.resume["changed"] == {"steps": [2, 4], "lr": [1e-2, 1e-3]}
    _, meta = load_checkpoint(tmp_path / "step_4.safetensors")
    assert meta["optimizer"]["param_groups"][0]["lr"] == 1e-3  # the optimiser's own, not only the record
    for change, message in (({"divergence": "squared_hellinger"}, "divergence: checkpoint 'kl'"),
                            ({"batch_size": 16}, "batch_size")):
        cfg, task = run(6, **change)
        with pytest.raises(ResumeMismatchError, match=message):
            unlearn(task, cfg, resume_from=tmp_path / "step_4.safetensors")
    cfg, task = run(3)
    with pytest.raises(ResumeMismatchError, match="at step 4, past the requested 3"):
        unlearn(task, cfg, resume_from=tmp_path / "step_4.safetensors")

    class TwoProcesses(SingleProcess):  # what a checkpoint written by one process says to a run of two
        num_processes = 2

    cfg, task = run(6)
    with pytest.raises(ResumeMismatchError, match="written by a run of 1 process"):
        unlearn(task, cfg, resume_from=tmp_path / "step_4.safetensors", accelerator=TwoProcesses())


def test_damaged_checkpoints_are_named_and_the_previous_good_one_offered(tmp_path):
    task = linear_task()
    unlearn(task, UnlearnConfig(steps=6, batch_size=8, checkpoint_every=2, checkpoint_dir=str(tmp_path),
                                progress=False))
    (tmp_path / "step_best.safetensors").write_bytes(b"")  # other names are not checkpoints of the run
    good = (tmp_path / "step_6.safetensors").read_bytes()
    tensors, meta = load_checkpoint(tmp_path / "step_4.safetensors")
    tensors["param/0"][0, 0] = float("nan")
    cases = {"truncated": good[: len(good) // 2], "empty": b"", "junk": b"not a checkpoint" * 20}
    for name, content in cases.items():
        (tmp_path / "step_6.safetensors").write_bytes(content)
        with pytest.raises(CorruptCheckpointError, match="step_6.safetensors.*previous good checkpoint is .*step_4"):
            load_checkpoint(tmp_path / "step_6.safetensors")
    save_file(tensors, str(tmp_path / "step_4.safetensors"), metadata={"fdu": json.dumps(meta)})
    with pytest.raises(CorruptCheckpointError, match="inf or NaN, which fdu never writes"):
        load_checkpoint(tmp_path / "step_4.safetensors")
    warnings = []
    path, meta = latest_good_checkpoint(tmp_path, warn=warnings.append)
    assert path.name == "step_2.safetensors" and meta["step"] == 2
    assert len(warnings) == 2 and "step_6" in warnings[0] and "step_4" in warnings[1]


# --- the command line, on the tiny pipeline -------------------------------------------------------------


def args(model, out, *extra, target="van gogh", anchor="painting"):
    return ["unlearn", "--model", str(model), "--target", target, "--anchor", anchor, "--output", str(out),
            "--quiet", "--batch-size", "2", "--gradient-accumulation-steps", "1", "--anchor-steps", "2",
            "--lr", "1e-3", *extra]


def test_the_chi2_blow_up_exits_2_and_writes_no_non_finite_tensor(tiny, tmp_path, capsys):
    out = tmp_path / "o"
    code = main(args(tiny, out, "--divergence", "pearson_chi2", "--lr", "10", "--sigma", "0.1", "--steps", "2",
                     "--checkpoint-every", "1"))
    err = capsys.readouterr().err
    assert code == 2 and err.splitlines()[-1].startswith("error: non-finite") and "Traceback" not in err
    assert files_are_finite(out) and not (out / "unlearned.safetensors").exists()
    for path in (out / "checkpoints").glob("step_*.safetensors"):
        load_checkpoint(path)  # every checkpoint it names as good reads back


def test_a_resume_applies_lr_and_steps_and_refuses_other_changes(tiny, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(args(tiny, out, "--steps", "4", "--checkpoint-every", "2")) == 0
    first = json.loads((out / "summary.json").read_text())
    (out / "checkpoints" / "step_4.safetensors").unlink()
    before = sorted(p.name for p in out.rglob("*"))
    assert main(args(tiny, out, "--steps", "6", "--checkpoint-every", "2", "--divergence", "squared_hellinger",
                     "--resume")) == 2
    err = capsys.readouterr().err
    assert "divergence: checkpoint 'kl', now 'squared_hellinger'" in err
    assert main(args(tiny, out, "--steps", "6", "--resume", anchor="cat")) == 2
    assert "anchor: checkpoint 'painting', now 'cat'" in capsys.readouterr().err
    assert sorted(p.name for p in out.rglob("*")) == before  # a refused resume touches nothing
    assert main(args(tiny, out, "--steps", "6", "--checkpoint-every", "2", "--lr", "5e-4", "--resume")) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resume"]["changed"] == {"steps": [4, 6], "lr": [1e-3, 5e-4]}
    assert summary["config"]["lr"] == 5e-4 and summary["anchor_images"] == first["anchor_images"]
    _, meta = load_checkpoint(out / "checkpoints" / "step_6.safetensors")
    assert meta["optimizer"]["param_groups"][0]["lr"] == 5e-4
    assert main(args(tiny, out, "--steps", "4", "--checkpoint-every", "2", "--lr", "5e-4", "--resume")) == 2
    assert "past the requested 4" in capsys.readouterr().err


def test_a_damaged_latest_checkpoint_is_named_and_the_previous_one_used(tiny, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(args(tiny, out, "--steps", "4", "--checkpoint-every", "2")) == 0
    latest = out / "checkpoints" / "step_4.safetensors"
    latest.write_bytes(latest.read_bytes()[:100])
    (out / "checkpoints" / "step_best.safetensors").write_bytes(b"")
    capsys.readouterr()
    assert main(args(tiny, out, "--steps", "4", "--checkpoint-every", "2", "--resume")) == 0
    said = capsys.readouterr().out
    assert f"skipping {latest}" in said
    assert json.loads((out / "summary.json").read_text())["resumed_from"].endswith("step_2.safetensors")
    load_checkpoint(latest)  # written again, whole
    for name in ("step_2", "step_4"):
        (out / "checkpoints" / f"{name}.safetensors").write_bytes(b"")
    assert main(args(tiny, out, "--steps", "4", "--resume")) == 2
    err = capsys.readouterr().err
    assert "step_4.safetensors is corrupted (an empty file)" in err and "no earlier good checkpoint" in err


def test_settings_and_folders_are_checked_before_anything_is_loaded(tiny, tmp_path, capsys):
    missing = tmp_path / "no-model"  # had it been loaded first, the error would be about the model
    for extra, message in ((("--lr", "-1"), "lr must be a finite number > 0"),
                           (("--sigma", "0"), "sigma must be"),
                           (("--anchor-steps", "0"), "anchor_steps must be >= 1"),
                           (("--variational", "--critic-warmup", "5", "--steps", "2"), "--critic-warmup (5)")):
        assert main(args(missing, tmp_path / "o", *extra)) == 2
        assert message in capsys.readouterr().err
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for out in (a_file, a_file / "below"):
        assert main(args(missing, out, "--steps", "2")) == 2
        err = capsys.readouterr().err
        assert "--output" in err and "Traceback" not in err
    binary = tmp_path / "captions.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    assert main(args(missing, tmp_path / "o", "--captions", str(binary))) == 2
    assert str(binary) in capsys.readouterr().err
    for extra, message in ((("--steps", "0"), "steps (sampler steps per image) must be >= 1"),
                           (("--output", str(tmp_path)), "is a folder"),
                           (("--output", str(a_file / "eval.json")), "the folder of the report")):
        assert main(["evaluate", "--model", str(missing), "--unlearned", str(missing), "--concept", "van gogh",
                     *extra]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes to read-only folders")
def test_a_read_only_output_is_refused_before_training(tiny, tmp_path, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        assert main(args(tiny, out / "run", "--steps", "2")) == 2
        assert "cannot be written to" in capsys.readouterr().err
    finally:
        out.chmod(0o700)


def test_an_operating_system_error_is_one_line_naming_the_file(tiny, tmp_path, capsys, monkeypatch):
    """Permission errors, a full disk: what the operating system says and the file (as root, chmod cannot
    make a folder read-only, so the error is raised where the pipeline is written)."""
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "o" / "unlearned.safetensors"))

    monkeypatch.setattr("safetensors.torch.save_file", refuse)
    assert main(args(tiny, tmp_path / "o", "--steps", "2", "--checkpoint-every", "0")) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err == f"error: Permission denied: {tmp_path / 'o' / 'unlearned.safetensors'}"


def test_damaged_models_and_files_give_one_line_errors(tiny, tmp_path, capsys):
    for name, damage in (("no-unet", lambda f: shutil.rmtree(f / "unet")),
                         ("cut-unet", lambda f: [p.write_bytes(p.read_bytes()[:1000])
                                                 for p in (f / "unet").glob("*.safetensors")])):
        folder = tmp_path / name
        shutil.copytree(tiny, folder)
        damage(folder)
        assert main(args(folder, tmp_path / f"o-{name}", "--steps", "2")) == 2
        err = capsys.readouterr().err
        assert f"cannot load the pipeline folder {folder}" in err and "Traceback" not in err
    with pytest.raises(Exception):  # --debug: the traceback, for reporting a bug
        main(["--debug", *args(tmp_path / "no-unet", tmp_path / "o-debug", "--steps", "2")])


def test_checkpoint_every_0_writes_the_outputs(tiny, tmp_path):
    out = tmp_path / "o"
    assert main(args(tiny, out, "--steps", "2", "--checkpoint-every", "0")) == 0
    assert (out / "unlearned.safetensors").is_file() and (out / "summary.json").is_file()
    assert not list((out / "checkpoints").glob("step_*"))


def test_the_anchor_cache_follows_the_model_contents_and_regenerates_damaged_latents(tmp_path, capsys):
    model, cache = tmp_path / "model", tmp_path / "cache"
    assert main(["tiny-pipeline", str(model), "--sample-size", "8", "--seed", "0"]) == 0
    common = ("--steps", "2", "--checkpoint-every", "0", "--cache-dir", str(cache))
    assert main(args(model, tmp_path / "a", *common)) == 0
    (first,) = [p for p in cache.iterdir()]
    latent = first / "00001.safetensors"
    original = load_file(str(latent))["latent"].clone()  # (load_file maps the file; it is about to change)
    latent.write_bytes(latent.read_bytes()[:50])
    capsys.readouterr()
    assert main(args(model, tmp_path / "b", *common)) == 0
    assert f"{latent} is damaged" in capsys.readouterr().out
    # generated again: the same image (to float rounding: it is drawn alone now, not in a batch of 4)
    torch.testing.assert_close(load_file(str(latent))["latent"], original, rtol=1e-4, atol=1e-4)
    shutil.rmtree(model)  # another model at the same path: other anchors
    assert main(["tiny-pipeline", str(model), "--sample-size", "8", "--seed", "1"]) == 0
    assert main(args(model, tmp_path / "c", *common)) == 0
    assert len(list(cache.iterdir())) == 2


def test_surprises_are_warned_about(tiny, tmp_path, capsys):
    captions = tmp_path / "captions.txt"
    captions.write_text("a painting of a harbour\n" + "a painting of " + "a very long winding road, " * 40 + "\n")
    assert main(args(tiny, tmp_path / "o", "--steps", "2", "--captions", str(captions), target="painting")) == 0
    said = capsys.readouterr().out
    assert "--target and --anchor are both 'painting'" in said
    assert "prompt(s) are longer than the text encoder's 77 tokens" in said and "winding road" in said
    assert "harbour" not in said  # the short caption is not reported


def test_runs_killed_at_random_steps_resume_to_the_uninterrupted_weights(tiny, tmp_path):
    """SIGKILL at a random step, three times in a row, each time resumed: the final weights are those of
    a run that was never interrupted. Each run is its own process, forked from a server that has imported
    fdu once (multiprocessing's forkserver), so a run starts in a second, not ten."""
    import multiprocessing

    steps, cache = 24, tmp_path / "anchors"
    common = ("--steps", str(steps), "--checkpoint-every", "1", "--cache-dir", str(cache))
    assert main(args(tiny, tmp_path / "whole", *common)) == 0
    out, rng, kills = tmp_path / "killed", random.Random(12), 0
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["fdu.cli", "fdu.sd.train", "fdu.sd.pipeline", "diffusers", "accelerate"])
    for attempt in range(4):
        proc = ctx.Process(target=main, args=([*args(tiny, out, *common), *(["--resume"] if attempt else [])],))
        proc.start()
        if attempt < 3:
            done = max([int(p.stem[5:]) for p in (out / "checkpoints").glob("step_*.safetensors")], default=0)
            at = rng.randint(done + 1, steps - 1)
            while proc.is_alive() and not (out / "checkpoints" / f"step_{at}.safetensors").exists():
                time.sleep(0.005)
            proc.kill()  # SIGKILL
        proc.join(timeout=300)
        kills += proc.exitcode == -signal.SIGKILL
    assert kills >= 2  # (a run may finish in the moment between its checkpoint and the signal)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resume"]["step"] > 0 and summary["resume"]["changed"] == {}
    a, b = load_file(str(tmp_path / "whole" / "unlearned.safetensors")), load_file(str(out / "unlearned.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
