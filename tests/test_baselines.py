"""The method axis (ESD and f-ESD through the one loop, UCE's closed-form edit) and many concepts (sequential
and joint erasure), on the tiny pipeline."""
import json

import pytest
import torch
from safetensors.torch import load_file

from fdu.cli import main
from fdu.unlearn import Batch, UnlearnConfig, reference_output


def test_esd_reference_is_the_negatively_guided_frozen_output(tiny):
    """reference = ε(x_t, c*) − η (ε(x_t, c*) − ε(x_t, "")), computed by hand with the pipeline's own UNet
    and text encoder, for a model whose trained K/V have moved away from the original."""
    from fdu.sd import load_pipeline, unlearning_task

    pipe = load_pipeline(str(tiny))
    targets, anchors = ["in van gogh's style, a painting of a boat"] * 2, ["", ""]
    latents = torch.randn(2, pipe.unet.config.in_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    task = unlearning_task(pipe, targets, anchors, latents)
    original = {n: p.detach().clone() for n, p in task.params.items()}
    from fdu.unlearn import SwappedReference

    task.reference = SwappedReference(task.trained_parameters())
    with torch.no_grad():
        for p in task.params.values():
            p.add_(0.5)                      # the trained copy differs: the reference must not see it
    x_t, t = torch.randn_like(latents), torch.tensor([3, 500])
    eta = 1.7
    got = reference_output(task, UnlearnConfig(method="esd", guidance=eta), Batch(x_t, t, targets, anchors))

    with torch.no_grad():
        trained = {n: p.detach().clone() for n, p in task.params.items()}
        for n, p in task.params.items():
            p.copy_(original[n])

        def eps(prompt):
            ids = pipe.tokenizer([prompt] * 2, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids
            return pipe.unet(x_t, t, encoder_hidden_states=pipe.text_encoder(ids)[0]).sample

        cond, uncond = eps(targets[0]), eps("")
        for n, p in task.params.items():
            p.copy_(trained[n])
    expected = cond - eta * (cond - uncond)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, cond, atol=1e-3)      # η moved it
    ca = reference_output(task, UnlearnConfig(method="ca"), Batch(x_t, t, targets, anchors))
    assert torch.allclose(ca, uncond, atol=1e-5)         # Concept Ablation towards "": the frozen uncond


def test_esd_and_f_esd_through_the_command_line(tiny, tmp_path):
    """--method esd trains on the target's own images with ESD-x / ESD-u parameter groups, with KL (ESD) or
    squared Hellinger (f-ESD), and writes loadable weights; an unknown method names the valid ones."""
    from fdu.sd import load_pipeline
    from fdu.sd.train import Denoiser, select_parameters

    pipe = load_pipeline(str(tiny))
    esd_u = select_parameters(Denoiser(pipe), "non_cross_attention")
    assert esd_u and not any(".attn2." in n for n in esd_u) and len(esd_u) > 10
    cache = tmp_path / "cache"
    runs = {"f-esd-x": ("cross_attention", "squared_hellinger")}
    for name, (group, divergence) in runs.items():
        out = tmp_path / name
        assert main(["unlearn", "--model", str(tiny), "--target", "van gogh", "--anchor", "", "--method", "esd",
                     "--guidance", "1.0", "--divergence", divergence, "--params", group, "--output", str(out),
                     "--quiet", "--steps", "2", "--batch-size", "2", "--gradient-accumulation-steps", "1",
                     "--anchor-steps", "2", "--cache-dir", str(cache)]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["config"]["method"] == "esd" and summary["config"]["divergence"] == divergence
        names = list(load_file(str(out / "unlearned.safetensors")))
        assert names and all((".attn2." in n) == (group == "cross_attention") for n in names)
    # the cache holds the target's images (ESD), not the empty prompt's
    prompts = [json.loads(p.read_text()).get("prompts", []) for p in cache.rglob("*.json")]
    assert any("van gogh" in " ".join(map(str, ps)) for ps in prompts), prompts
    with pytest.raises(ValueError, match="'ca', 'esd'"):
        UnlearnConfig(method="uce-typo").check()


def test_uce_maps_the_target_to_the_anchor_and_keeps_the_preserved(tiny):
    """After the edit each K/V projection sends the target's token states where the original sent the
    anchor's, up to the regulariser (the smaller λ, the closer), and moves a preserved concept's by little."""
    from fdu.sd import load_pipeline
    from fdu.uce import edit_pairs, token_states, uce_edit

    targets, anchors, keep = ["van gogh", "art by van gogh"], ["painting", "art by painting"], ["monet"]
    errors = {}
    pipe = load_pipeline(str(tiny))
    c, c_star = edit_pairs(pipe, targets, anchors)
    p = token_states(pipe, keep)[0]
    old = {n: w.detach().double().clone() for n, w in pipe.unet.named_parameters() if ".attn2.to_" in n}
    for lam in (1.0, 1e-4):
        with torch.no_grad():   # each λ edits the original weights
            for n, w in pipe.unet.named_parameters():
                if n in old:
                    w.copy_(old[n].to(w.dtype))
        edited = uce_edit(pipe, targets, anchors, keep, lam=lam)
        assert edited and all(n.startswith("unet.") and (".attn2.to_k." in n or ".attn2.to_v." in n) for n in edited)
        worst_edit, worst_keep = 0.0, 0.0
        for name, w in edited.items():
            w_old, w_new = old[name[len("unet."):]], w.detach().double()
            goal = c_star @ w_old.T
            worst_edit = max(worst_edit, float((c @ w_new.T - goal).norm() / (c @ w_old.T - goal).norm()))
            worst_keep = max(worst_keep, float((p @ w_new.T - p @ w_old.T).norm() / (p @ w_old.T).norm()))
        errors[lam] = (worst_edit, worst_keep)
        untouched = [n for n, w in pipe.unet.named_parameters() if ".attn2.to_q." in n]
        assert all(torch.equal(dict(pipe.unet.named_parameters())[n], w) for n, w in
                   [(n, dict(pipe.unet.named_parameters())[n]) for n in untouched])
    assert errors[1e-4][0] < 0.01 and errors[1e-4][0] < errors[1.0][0] < 1.0   # the edit, up to λ
    assert errors[1e-4][1] < 0.05                                               # the preserved concept


def test_uce_through_the_command_line_and_its_bad_input(tiny, tmp_path, capsys):
    """--method uce writes the edited K/V and a loadable pipeline without anchor images; a divergence or a
    critic with it, or a λ ≤ 0, is refused before anything loads."""
    from fdu.sd import load_pipeline, load_unlearned

    out = tmp_path / "uce"
    base = ["unlearn", "--model", str(tiny), "--target", "van gogh", "--anchor", "painting", "--method", "uce",
            "--output", str(out), "--quiet", "--preserve", "monet", "claude monet"]
    assert main(base) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["anchor_images"] == 0 and summary["config"]["method"] == "uce"
    assert not list((out / "anchors").rglob("*.safetensors")) if (out / "anchors").exists() else True
    names = load_unlearned(load_pipeline(str(tiny)), out / "unlearned.safetensors")
    assert names and all(".attn2.to_k." in n or ".attn2.to_v." in n for n in names)
    edited = load_pipeline(str(out / "pipeline"))
    assert edited(["van gogh"], num_inference_steps=2, output_type="pt").images.isfinite().all()
    for extra, message in ((["--divergence", "squared_hellinger"], "no --divergence"),
                           (["--variational"], "no --divergence"), (["--uce-lambda", "0"], "must be > 0")):
        assert main(base[:-3] + ["--output", str(tmp_path / "bad")] + extra) == 2
        assert message in capsys.readouterr().err
    from fdu.unlearn import unlearn

    with pytest.raises(ValueError, match="closed-form edit"):
        unlearn(None, UnlearnConfig(method="uce"))


def _many(tiny, out, *extra):
    return ["unlearn", "--model", str(tiny), "--target", "van gogh", "monet", "--anchor", "painting",
            "--output", str(out), "--quiet", "--steps", "2", "--batch-size", "2", "--gradient-accumulation-steps", "1",
            "--anchor-steps", "2", "--checkpoint-every", "1", *extra]


def test_sequential_erasure_chains_the_runs_and_an_interrupted_sequence_resumes_exactly(tiny, tmp_path):
    """Two concepts one after another: stage 2 trains from stage 1's pipeline; OUTPUT holds the last weights
    and a loadable pipeline; a sequence cut inside stage 2 and resumed ends with the same weights."""
    import shutil

    from fdu.sd import load_pipeline

    full = tmp_path / "full"
    assert main(_many(tiny, full)) == 0
    summary = json.loads((full / "summary.json").read_text())
    assert summary["mode"] == "sequential" and summary["concepts"] == ["van gogh", "monet"]
    assert [s["model"] for s in summary["stages"]] == [str(tiny), str(full / "01-van-gogh" / "pipeline")]
    first, last = (load_file(str(full / f / "unlearned.safetensors")) for f in ("01-van-gogh", "02-monet"))
    final = load_file(str(full / "unlearned.safetensors"))
    assert all(torch.equal(final[n], last[n]) for n in final) and any(not torch.equal(first[n], last[n]) for n in first)
    images = load_pipeline(str(full / "pipeline"))(["monet"], num_inference_steps=2, output_type="pt").images
    assert images.isfinite().all()

    stage = full / "02-monet"                    # as if killed after stage 2's first checkpoint
    for name in ("summary.json", "unlearned.safetensors", "checkpoints/step_2.safetensors", "checkpoints/history.json"):
        (stage / name).unlink()
    shutil.rmtree(stage / "pipeline")
    (full / "summary.json").unlink()
    assert main(_many(tiny, full, "--resume")) == 0
    resumed = load_file(str(full / "unlearned.safetensors"))
    assert resumed.keys() == final.keys() and all(torch.equal(resumed[n], final[n]) for n in final)


def test_joint_erasure_and_a_file_of_targets(tiny, tmp_path):
    """--joint trains once on the caption pairs of every target; --target FILE reads one concept per line;
    no concept, or one named twice, is refused before anything loads."""
    concepts = tmp_path / "concepts.txt"
    concepts.write_text("# artists\nvan gogh\n\nmonet\n")
    out = tmp_path / "joint"
    args = _many(tiny, out, "--joint")
    args[args.index("van gogh"):args.index("monet") + 1] = [str(concepts)]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["target"] == ["van gogh", "monet"] and summary["config"]["joint"] is True
    assert not (out / "01-van-gogh").exists() and (out / "pipeline").is_dir()
    from fdu.sd.train import concepts_of

    for bad, message in (([""], "non-empty"), (["van gogh", "van gogh"], "twice")):
        with pytest.raises(ValueError, match=message):
            concepts_of(bad)
    empty = tmp_path / "none.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="names no concept"):
        concepts_of([str(empty)])
