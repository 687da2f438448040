"""The mini Stable Diffusion: its world, the shipped pipeline and CLIP (quality thresholds of the
issue), the recipe (a few steps, interrupted and resumed), the command line erasing Van Gogh, bad input."""
import json
import shutil

import pytest
import torch

from fdu.cli import main
from fdu.sd import mini, world
from fdu.sd.mini_train import Recipe


@pytest.fixture(scope="module")
def mini_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mini")
    assert main(["mini-sd", str(folder)]) == 0
    return folder


@pytest.fixture(scope="module")
def loaded(mini_dir):
    from fdu.sd.evaluate import load_clip
    from fdu.sd.pipeline import load_pipeline

    pipe = load_pipeline(str(mini_dir / "pipeline"))
    clip, processor = load_clip(str(mini_dir / "clip"))
    return pipe, clip, processor


def test_world_draws_every_style_object_and_colour_deterministically():
    items = [world.Item(s, o, (s + o) % len(world.COLOURS)) for s in range(len(world.STYLES))
             for o in range(len(world.SHAPES))]
    a, b = world.render(items, seed=3), world.render(items, seed=3)
    assert a.shape == (len(items), 3, 32, 32) and torch.equal(a, b)
    assert 0 <= a.min() and a.max() <= 1
    per_style = a.view(len(world.STYLES), len(world.SHAPES), 3, 32, 32).mean((1, 3, 4))   # mean colour
    gaps = torch.cdist(per_style, per_style) + torch.eye(len(world.STYLES))
    assert gaps.min() > 0.02                       # every style looks different on average
    kept = {"van gogh", "monet", "greg rutkowski", "salvador dali", "johannes vermeer", "jeremy mann"}
    assert kept <= set(world.STYLES)
    with pytest.raises(ValueError, match="valid: painting, van gogh"):
        world.check_name("van goh", "style")
    with pytest.raises(ValueError, match="circle, square"):
        world.eval_prompts("hexagon")


def test_captions_follow_the_official_templates_and_clip_texts_match():
    import random

    rng = random.Random(0)
    items = world.sample_items(200, seed=1)
    caps = [world.caption(it, rng) for it in items]
    for it, c in zip(items, caps):
        style = world.STYLES[it.style]
        assert (style in c) == (style != "painting") or c.startswith("a painting of")
    texts, constraints = zip(*(world.clip_text(it, rng) for it in items))
    match = world.text_matches(constraints, items)
    assert match.diagonal().all()                  # each text describes its own image
    assert 0 < match.float().mean() < 0.5


def test_tokenizer_is_a_clip_bpe_over_the_worlds_words(tmp_path):
    from fdu.sd.mini_train import build_tokenizer

    tok = build_tokenizer(tmp_path, Recipe.quick())
    text = "in johannes vermeer's style, a painting of a purple heart"
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert len(ids) < len(text) // 2                # merges, not characters
    assert tok.decode(ids, skip_special_tokens=True).replace(" ", "") == text.replace(" ", "")
    assert (tmp_path / "vocab.json").is_file() and (tmp_path / "merges.txt").is_file()


def test_shipped_model_loads_through_diffusers_and_transformers(mini_dir):
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPModel, CLIPProcessor

    pipe = StableDiffusionPipeline.from_pretrained(str(mini_dir / "pipeline"), safety_checker=None,
                                                   requires_safety_checker=False)
    assert any(".attn2.to_k." in n for n, _ in pipe.unet.named_parameters())
    assert pipe.vae.config.scaling_factor != 0.18215          # set from the trained VAE's latents
    CLIPModel.from_pretrained(str(mini_dir / "clip"))
    CLIPProcessor.from_pretrained(str(mini_dir / "clip"))
    concepts = json.loads((mini_dir / "eval" / "concepts.json").read_text())
    assert concepts["van gogh"]["retained"] == ["monet", "greg rutkowski", "salvador dali", "johannes vermeer",
                                                "jeremy mann"]
    for name, c in concepts.items():
        for x in [name, *c["retained"]]:
            assert len((mini_dir / "eval" / f"{x.replace(' ', '_')}.txt").read_text().splitlines()) >= 10
    info = mini.manifest()
    assert info["recipe"]["seed"] == 0 and info["seconds"]["unet"] > 0


def test_mini_clip_and_samples_reach_the_quality_thresholds(loaded):
    pipe, clip, processor = loaded
    q = mini.quality(pipe, clip, processor, n_real=252, n_samples=54, steps=25, guidance=7.5)
    real, samples = q["clip_real"], q["samples"]
    assert real["clip_accuracy_style"] >= 0.9 and real["clip_accuracy_object"] >= 0.7, real
    assert real["zero_shot_style"] >= 0.9 and real["zero_shot_object"] >= 0.7, real   # the judge of the samples
    assert samples["style_accuracy"] >= 0.9 and samples["object_accuracy"] >= 0.7, samples
    assert samples["object_accuracy_in_styles"] >= 0.5, samples  # objects under every style: harder


def test_recipe_runs_a_few_steps_and_an_interrupted_build_resumes(tmp_path, monkeypatch):
    from fdu.sd import mini_train
    from fdu.sd.pipeline import load_pipeline

    calls = {"n": 0}
    real_update = mini_train._ema_update

    def crash_at_step_3(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        real_update(*args)

    monkeypatch.setattr(mini_train, "_ema_update", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        mini.train(tmp_path, Recipe.quick(), progress=False, log=lambda *a: None)
    assert not (tmp_path / "pipeline").exists()               # nothing half-written that loads
    assert torch.load(tmp_path / "build" / "unet.ckpt", weights_only=False)["step"] == 2
    monkeypatch.setattr(mini_train, "_ema_update", real_update)
    mini.train(tmp_path, Recipe.quick(), progress=False, log=lambda *a: None)
    pipe = load_pipeline(str(tmp_path / "pipeline"))
    assert pipe("a red star", num_inference_steps=2, output_type="np").images.shape == (1, 32, 32, 3)
    assert (tmp_path / "clip" / "config.json").is_file() and (tmp_path / "eval" / "concepts.json").is_file()
    with pytest.raises(FileExistsError, match="another recipe"):
        mini.train(tmp_path, Recipe.quick().__class__(**{**Recipe.quick().__dict__, "seed": 1}), progress=False)


def test_bad_input_gets_clear_errors(tmp_path, mini_dir, capsys):
    assert main(["mini-sd", ""]) == 2
    assert "needs a folder" in capsys.readouterr().err
    copy = tmp_path / "shipped"
    shutil.copytree(mini.SHIPPED, copy)
    weights = next((copy / "pipeline" / "unet").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(mini.CorruptedModelError, match="corrupted"):
        mini.write(tmp_path / "out", source=copy)
    weights.unlink()
    with pytest.raises(mini.CorruptedModelError, match="lacks"):
        mini.write(tmp_path / "out", source=copy)
    assert not (tmp_path / "out" / "pipeline").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    args = ["unlearn", "--model", str(empty), "--target", "van gogh", "--anchor", "painting", "--output",
            str(tmp_path / "o"), "--quiet"]
    assert main(args) == 2 and "model_index.json" in capsys.readouterr().err
    args[2] = str(mini_dir / "pipeline")
    args[4] = "van goh"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "not a concept of the model" in err and "van gogh" in err


def test_cli_erases_van_gogh_on_the_mini_model_in_about_half_a_minute(mini_dir, tmp_path):
    out = tmp_path / "vangogh"
    assert main(["unlearn", "--model", str(mini_dir / "pipeline"), "--target", "van gogh", "--anchor", "painting",
                 "--concept-type", "style", "--divergence", "squared_hellinger", "--steps", "80", "--lr", "2e-3",
                 "--max-anchor-images", "40", "--anchor-batch-size", "40", "--output", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["first_prompts"]["anchor"][0].startswith("a painting of a")   # the world's own captions
    assert main(["evaluate", "--model", str(mini_dir / "pipeline"), "--unlearned", str(out), "--concept", "van gogh",
                 "--clip-model", str(mini_dir / "clip"), "--eval-prompts", str(mini_dir / "eval"), "--steps", "15",
                 "--quiet"]) == 0
    report = json.loads((out / "eval.json").read_text())
    base, after = report["table"]["base"], report["table"]["unlearned"]
    assert base["erased_clip_accuracy"] - after["erased_clip_accuracy"] >= 0.5, report["table"]
    assert base["retained_clip_accuracy"] - after["retained_clip_accuracy"] <= 0.15, report["table"]
    assert after["kid_retained"] is not None and len(report["retained"]) == 5
    assert "KID" in (out / "eval.md").read_text()


def test_report_names_the_sd_scale_from_notebook_06s_results(tmp_path):
    from fdu import report
    from fdu.paths import REPO_ROOT

    for path in (REPO_ROOT / "paper" / "results").glob("*.json"):
        shutil.copy(path, tmp_path / path.name)
    nb06 = tmp_path / f"{report.NB06}.json"
    data = json.loads(nb06.read_text())
    assert "comparisons" in data["results"], "notebook 06's committed results carry the comparisons"
    rows = {int(line.split("|")[1]): line for line in report.build(tmp_path).splitlines()
            if line[:3] in ("| 4", "| 5", "| 6")}
    assert all("mini-SD" in rows[n] and "SD: not checkable here" in rows[n] for n in (4, 5, 6))
    data["parameters"]["model_id"] = "stabilityai/stable-diffusion-2-1"       # as a GPU run writes it
    nb06.write_text(json.dumps(data))
    text = report.build(tmp_path)
    for n in (4, 5, 6, 10):
        row = next(line for line in text.splitlines() if line.startswith(f"| {n} |"))
        assert "SD (stabilityai/stable-diffusion-2-1)" in row and "not checkable" not in row and "mini-SD" not in row
