"""The mini flow-matching model (fdu.sd.mini_flow): the shipped SD3-format pipeline loads through diffusers and
samples, its files are checked against the manifest, the recipe resumes an interrupted build to the same
weights, and Van Gogh is erased from it through the command line with squared Hellinger."""
import json
import shutil

import pytest
import torch

from fdu.cli import main
from fdu.sd import mini_flow


@pytest.fixture(scope="module")
def flow_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mini-flow")
    assert main(["mini-flow", str(folder)]) == 0
    return folder


def test_the_shipped_flow_model_loads_as_sd3_and_samples(flow_dir):
    from fdu.sd.families import family_of, prediction_type
    from fdu.sd.pipeline import load_pipeline

    info = json.loads((mini_flow.SHIPPED / "manifest.json").read_text())
    assert {"recipe", "seconds", "sha256"} <= set(info)
    size = sum(p.stat().st_size for p in mini_flow.SHIPPED.rglob("*") if p.is_file())
    assert size < 30 * 2 ** 20
    pipe = load_pipeline(str(flow_dir / "pipeline"))
    assert family_of(pipe) == "sd3" and prediction_type(pipe) == "flow" and pipe.text_encoder_3 is None
    image = pipe(["a red star, in the style of van gogh"], num_inference_steps=4, output_type="np").images
    assert image.shape == (1, 32, 32, 3)
    assert (flow_dir / "pipeline" / "world.json").is_file() and (flow_dir / "clip" / "config.json").is_file()
    assert (flow_dir / "eval" / "concepts.json").is_file()


def test_a_corrupted_shipped_file_is_named(tmp_path):
    from fdu.sd.mini import CorruptedModelError

    copy = tmp_path / "shipped"
    shutil.copytree(mini_flow.SHIPPED, copy)
    weights = next((copy / "pipeline" / "transformer").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CorruptedModelError, match="transformer"):
        mini_flow.write(tmp_path / "out", source=copy)
    assert not (tmp_path / "out" / "pipeline").exists()


def test_an_interrupted_build_resumes_to_the_same_transformer(tmp_path, monkeypatch):
    from fdu.sd import mini_train

    recipe = mini_flow.FlowRecipe.quick()
    whole = mini_flow.build(tmp_path / "whole", recipe, progress=False, log=lambda *a: None)
    assert whole["seconds"]["transformer"] >= 0
    real_save = mini_train._atomic_save

    def save_then_die(obj, path):   # killed right after the checkpoint of step 2
        real_save(obj, path)
        if isinstance(obj, dict) and obj.get("step") == 2:
            raise KeyboardInterrupt
    monkeypatch.setattr(mini_train, "_atomic_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        mini_flow.build(tmp_path / "cut", recipe, progress=False, log=lambda *a: None)
    assert not (tmp_path / "cut" / "pipeline").exists()     # nothing half-written under the real name
    monkeypatch.setattr(mini_train, "_atomic_save", real_save)
    mini_flow.build(tmp_path / "cut", recipe, progress=False, log=lambda *a: None)
    from safetensors.torch import load_file

    a = load_file(str(next((tmp_path / "whole" / "pipeline" / "transformer").glob("*.safetensors"))))
    b = load_file(str(next((tmp_path / "cut" / "pipeline" / "transformer").glob("*.safetensors"))))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(FileExistsError, match="another recipe"):
        mini_flow.build(tmp_path / "cut", mini_flow.FlowRecipe(steps=5), progress=False)


def test_cli_erases_van_gogh_from_the_flow_model_with_squared_hellinger(flow_dir, tmp_path):
    out = tmp_path / "vangogh"
    assert main(["unlearn", "--model", str(flow_dir / "pipeline"), "--target", "van gogh", "--anchor", "painting",
                 "--divergence", "squared_hellinger", "--normalization", "reverse_step", "--steps", "80",
                 "--lr", "5e-4", "--max-anchor-images", "40", "--anchor-batch-size", "40", "--anchor-steps", "12",
                 "--output", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["family"] == "sd3" and summary["prediction_type"] == "flow"
    assert main(["evaluate", "--model", str(flow_dir / "pipeline"), "--unlearned", str(out), "--concept", "van gogh",
                 "--clip-model", str(flow_dir / "clip"), "--eval-prompts", str(flow_dir / "eval"), "--steps", "12",
                 "--quiet"]) == 0
    table = json.loads((out / "eval.json").read_text())["table"]
    base, after = table["base"], table["unlearned"]
    assert base["erased_clip_accuracy"] - after["erased_clip_accuracy"] >= 0.5, table
    assert base["retained_clip_accuracy"] - after["retained_clip_accuracy"] <= 0.15, table
