"""Every model family through the command line (fdu.sd.families): the tiny SDXL, SD3 and FLUX pipelines
train 2 steps, checkpoint, resume to the same bits, change exactly the tensors of the group, and write a
folder that the family's own ``from_pretrained`` loads and samples from; unsupported families and groups an
architecture does not have are clear errors."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from fdu.cli import main

FAMILIES = ("sdxl", "sd3", "flux")


@pytest.fixture(scope="session")
def tiny_family(tmp_path_factory):
    built = {}

    def get(family):
        if family not in built:
            folder = tmp_path_factory.mktemp(f"tiny-{family}")
            assert main(["tiny-pipeline", str(folder), "--family", family]) == 0
            built[family] = folder
        return built[family]
    return get


def unlearn(model, out, *extra):
    return main(["unlearn", "--model", str(model), "--target", "van gogh", "--anchor", "painting",
                 "--output", str(out), "--steps", "2", "--checkpoint-every", "1", "--batch-size", "2",
                 "--gradient-accumulation-steps", "1", "--anchor-steps", "2", "--resolution", "32",
                 "--max-anchor-images", "4", "--normalization", "reverse_step", "--divergence",
                 "squared_hellinger", "--quiet", *extra])


def _load(family, folder):
    from fdu.sd.families import pipeline_class, read_model_index

    absent = {k: None for k, v in read_model_index(folder).items() if isinstance(v, list) and v and v[0] is None}
    pipe = pipeline_class(family).from_pretrained(str(folder), local_files_only=True, **absent)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _tensors(pipe) -> dict:
    from fdu.sd.families import weight_owners

    return {f"{o}.{n}": t.detach().clone() for o, m in weight_owners(pipe).items() for n, t in m.state_dict().items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_trains_checkpoints_resumes_exactly_and_writes_a_loadable_pipeline(family, tiny_family, tmp_path):
    from fdu.sd.families import select

    model = tiny_family(family)
    full, part = tmp_path / "full", tmp_path / "part"
    assert unlearn(model, full) == 0
    assert sorted(p.name for p in (full / "checkpoints").glob("step_*")) == ["step_1.safetensors", "step_2.safetensors"]
    summary = json.loads((full / "summary.json").read_text())
    assert summary["family"] == family
    assert summary["prediction_type"] == ("epsilon" if family == "sdxl" else "flow")
    # interrupted after step 1, resumed: the same weights, bit for bit
    shutil.copytree(full, part)
    for name in ("checkpoints/step_2.safetensors", "unlearned.safetensors", "summary.json"):
        (part / name).unlink()
    shutil.rmtree(part / "pipeline")
    assert unlearn(model, part, "--resume") == 0
    a, b = load_file(str(full / "unlearned.safetensors")), load_file(str(part / "unlearned.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the trained tensors are exactly the group's, and only they changed
    base = _load(family, model)
    group = set(select(base, "kv"))
    assert set(a) == group
    before, after = _tensors(base), _tensors(_load(family, full / "pipeline"))
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= group
    assert {k for k in group if k.endswith("weight")} <= changed
    # the output folder samples with the family's own pipeline
    pipe = _load(family, full / "pipeline")
    image = pipe(["a red star, in the style of van gogh"], num_inference_steps=2, height=32, width=32,
                 output_type="np").images
    assert image.shape == (1, 32, 32, 3) and bool(torch.isfinite(torch.as_tensor(image)).all())


def test_the_kv_group_names_each_architectures_text_key_value_tensors(tiny_family):
    from fdu.sd.families import select

    sdxl, sd3, flux = (_load(f, tiny_family(f)) for f in FAMILIES)
    assert all(".attn2.to_k." in n or ".attn2.to_v." in n for n in select(sdxl, "kv"))
    for pipe in (sd3, flux):
        names = select(pipe, "kv")
        assert names and all(n.startswith("transformer.transformer_blocks.") for n in names)
        assert all(".attn.add_k_proj." in n or ".attn.add_v_proj." in n for n in names)
    # FLUX's single-stream blocks have no separate text projections: none of theirs is in kv
    assert not any("single_transformer_blocks" in n for n in select(flux, "kv"))
    # embedding: every text encoder's token embedding (FLUX: CLIP and T5)
    assert set(select(flux, "embedding")) == {"text_encoder.embeddings.token_embedding.weight",
                                              "text_encoder_2.shared.weight"}


def test_an_mmdit_has_no_cross_attention_group_and_a_unet_no_transformer_group(tiny_family, tmp_path, capsys):
    assert unlearn(tiny_family("sd3"), tmp_path / "a", "--params", "cross_attention") == 2
    err = capsys.readouterr().err
    assert "'cross_attention' does not exist in 'sd3'" in err and "kv, attention, transformer, embedding" in err
    assert unlearn(tiny_family("sdxl"), tmp_path / "b", "--params", "transformer") == 2
    assert "kv, attention, cross_attention, non_cross_attention, unet, embedding" in capsys.readouterr().err
    assert unlearn(tiny_family("flux"), tmp_path / "c", "--method", "uce") == 2
    assert "--method uce" in capsys.readouterr().err
    assert not (tmp_path / "a" / "checkpoints").exists()   # refused before anything was written


def test_an_unsupported_pipeline_family_is_named_with_the_supported_ones(tiny_family, tmp_path, capsys):
    from fdu.sd.families import UnsupportedFamilyError
    from fdu.sd.pipeline import load_pipeline

    other = tmp_path / "kandinsky"
    shutil.copytree(tiny_family("sd3"), other)
    index = json.loads((other / "model_index.json").read_text())
    index["_class_name"] = "KandinskyV22Pipeline"
    (other / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(UnsupportedFamilyError, match="StableDiffusionXLPipeline"):
        load_pipeline(str(other))
    assert unlearn(other, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "KandinskyV22Pipeline" in err and "sd3 (StableDiffusion3Pipeline)" in err and "flux (FluxPipeline)" in err
    with pytest.raises(SystemExit):
        main(["tiny-pipeline", str(tmp_path / "x"), "--family", "kandinsky"])
    assert "invalid choice: 'kandinsky'" in capsys.readouterr().err


@pytest.mark.parametrize("family", ("sdxl", "sd3", "flux"))
def test_a_hub_id_in_the_local_cache_loads_with_its_family(family, tiny_family, tmp_path, monkeypatch):
    """What a GPU user passes: a hub id, resolved offline from the hub cache (laid out as huggingface_hub does)."""
    import huggingface_hub.constants as hub

    from fdu.sd.families import family_of
    from fdu.sd.pipeline import ModelNotAvailableError, load_pipeline

    repo = tmp_path / f"models--fdu-test--tiny-{family}"
    shutil.copytree(tiny_family(family), repo / "snapshots" / ("0" * 40), ignore=shutil.ignore_patterns("clip"))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    assert family_of(load_pipeline(f"fdu-test/tiny-{family}", local_files_only=True, progress=False)) == family
    with pytest.raises(ModelNotAvailableError, match="not in the local hub cache"):
        load_pipeline("fdu-test/absent", local_files_only=True, progress=False)


def test_a_flow_family_trains_in_two_processes(tiny_family, tmp_path):
    """accelerate launch with two CPU processes (gloo) on the tiny FLUX: packed latents, the flow schedule
    and the gradient averaging of the loop together."""
    import os
    import subprocess
    import sys

    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    out = tmp_path / "two"
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
           "no", "--dynamo_backend", "no", "-m", "fdu", "unlearn", "--model", str(tiny_family("flux")), "--target",
           "van gogh", "--anchor", "painting", "--output", str(out), "--steps", "2", "--batch-size", "1",
           "--gradient-accumulation-steps", "1", "--anchor-steps", "2", "--resolution", "32",
           "--normalization", "reverse_step", "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["family"] == "flux" and summary["anchor_images"] == 4
    assert _load("flux", out / "pipeline").transformer is not None
