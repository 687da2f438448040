"""Project promises: the conda file matches pyproject, the report builds, the pins are exact."""
import re
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_names_the_same_packages_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"]}
    for extra in ("notebooks", "test"):
        wanted |= {_name(r) for r in project["optional-dependencies"][extra]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {_name(r) for r in pip_section if not r.startswith("-")}
    assert listed == wanted
    assert "-c constraints.txt" in pip_section


def test_constraints_pin_every_dependency_exactly_and_torch_without_a_local_tag():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for req in project["dependencies"]:
        assert _name(req) in pins, req
    assert "+" not in pins["torch"]


def test_report_builds_from_results(tmp_path):
    from fdu.report import CLAIMS, build

    text = build(tmp_path)  # no results yet: every row says so, none is invented
    assert text.count("\n| ") == len(CLAIMS) + 1
    assert "| reproduced |" not in text


def test_report_fills_claims_from_results_and_can_say_contradicted(tmp_path):
    import json
    import shutil

    from fdu.report import NB01, build

    src = ROOT / "paper" / "results" / f"{NB01}.json"
    shutil.copy(src, tmp_path / src.name)
    text = build(tmp_path)
    rows = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| ")}
    for claim in ("| 1", "| 2", "| 13"):
        assert rows[claim].endswith("| reproduced |")
    data = json.loads(src.read_text())
    data["results"]["official_match"]["mse"]["max_grad_diff"] = 1.0  # as if our MSE differed
    (tmp_path / src.name).write_text(json.dumps(data))
    rows = {line.split(" | ")[0]: line for line in build(tmp_path).splitlines() if line.startswith("| ")}
    assert rows["| 1"].endswith("| contradicted |")


def test_report_rows_for_the_theory_notebooks(tmp_path):
    import json
    import shutil

    from fdu.report import NB02, NB03, build

    for nb in (NB02, NB03):
        shutil.copy(ROOT / "paper" / "results" / f"{nb}.json", tmp_path / f"{nb}.json")
    rows = {line.split(" | ")[0]: line for line in build(tmp_path).splitlines() if line.startswith("| ")}
    assert rows["| 3"].endswith("| reproduced |")
    assert "partly reproduced" in rows["| 11"] or rows["| 11"].endswith("| reproduced |")
    assert "not yet measured" in rows["| 13"]  # its main evidence is notebook 01, absent here
    data = json.loads((tmp_path / f"{NB02}.json").read_text())
    data["results"]["verdict"]["ordering_normalised"] = False  # as if chi2 fell below MSE
    (tmp_path / f"{NB02}.json").write_text(json.dumps(data))
    data = json.loads((tmp_path / f"{NB03}.json").read_text())
    data["results"]["verdict"].update(hellinger_fastest_linear_critic=False,
                                      js_faster_than_kl_unit_activation_slope=False)
    (tmp_path / f"{NB03}.json").write_text(json.dumps(data))
    rows = {line.split(" | ")[0]: line for line in build(tmp_path).splitlines() if line.startswith("| ")}
    assert rows["| 3"].endswith("| contradicted |") and rows["| 11"].endswith("| contradicted |")


def test_report_rows_for_the_toy_notebook(tmp_path):
    import json
    import shutil

    from fdu.report import NB04, build

    src = ROOT / "paper" / "results" / f"{NB04}.json"
    shutil.copy(src, tmp_path / src.name)
    rows = {line.split(" | ")[0]: line for line in build(tmp_path).splitlines() if line.startswith("| ")}
    for claim in ("| 4", "| 5", "| 6", "| 10", "| 12"):
        assert "toy:" in rows[claim] and "not yet measured" not in rows[claim]
    for claim in ("| 4", "| 5", "| 6"):
        assert "not checkable here" in rows[claim]  # the SD half of the claim is never filled in
    data = json.loads(src.read_text())
    data["results"]["verdict"].update(variational_bias_shrinks_with_batch=False,
                                      variational_spread_shrinks_with_batch=False)
    (tmp_path / src.name).write_text(json.dumps(data))
    rows = {line.split(" | ")[0]: line for line in build(tmp_path).splitlines() if line.startswith("| ")}
    assert rows["| 12"].endswith("| toy: not reproduced |")


def test_report_rows_for_the_digits_notebook(tmp_path):
    import json
    import shutil

    from fdu.report import NB04, NB05, build

    for nb in (NB04, NB05):
        src = ROOT / "paper" / "results" / f"{nb}.json"
        shutil.copy(src, tmp_path / src.name)
    rows = {line.split(" | ")[0]: line for line in build(tmp_path).splitlines() if line.startswith("| ")}
    for claim in ("| 4", "| 5", "| 6", "| 10", "| 12"):
        assert "toy:" in rows[claim] and "digits:" in rows[claim], claim
    for claim in ("| 4", "| 5", "| 6"):
        assert rows[claim].endswith("SD: not checkable here |")
    path = tmp_path / f"{NB05}.json"
    data = json.loads(path.read_text())
    v = data["results"]["verdict"]
    for key in [k for k in v if k.startswith("hellinger_vs_mse")]:
        v[key]["verdict"] = "b better"
    v["chi2_vs_mse_budget"].update(erases_more=False, erases_less=True, more_damage=False)
    eps = data["results"]["epsilon_units"]["verdict"]  # the ε-equivalent verdicts are read on their own
    for key in ("hellinger_vs_mse_matched_erasure", "hellinger_vs_mse_best_erased"):
        eps[key]["verdict"] = "a better"
    eps["chi2_vs_mse_budget"].update(erases_more=True, erases_less=False, more_damage=True)
    path.write_text(json.dumps(data))
    rows = {line.split(" | ")[0]: line for line in build(tmp_path).splitlines() if line.startswith("| ")}
    assert "digits: contradicted (MSE less damaging) (v outputs); reproduced (ε-equivalent)" in rows["| 4"]
    assert "digits: contradicted (χ² erases less" in rows["| 5"] and "reproduced (ε-equivalent)" in rows["| 5"]
    assert "With ε-equivalent δ²" in rows["| 4"] and "With ε-equivalent δ²" in rows["| 5"]
    for key in [k for k in v if k.startswith("hellinger_vs_mse")]:
        v[key]["verdict"] = "a better"
    v["chi2_vs_mse_budget"].update(erases_more=True, erases_less=False, more_damage=True)
    path.write_text(json.dumps(data))
    rows = {line.split(" | ")[0]: line for line in build(tmp_path).splitlines() if line.startswith("| ")}
    assert "digits: reproduced" in rows["| 4"] and "digits: reproduced" in rows["| 5"]


#: the working digest's name and its source tags: the project cites the paper and real works instead
DIGEST_REFERENCE = re.compile(r"paper\.md|\[(DER|PN|AL|WZ|RT|OR|v[12]-abs|ICML|README|CODE)([];,]| )")


def test_no_reference_to_the_working_digest_or_its_tags_remains():
    """Notebooks, code, docs and the report cite the paper and paper/REFERENCES.md, never our private
    digest (`paper.md`) or its source tags, which exist nowhere in the repository."""
    skip = {".git", ".venv", "runs", "executed", "figures", "__pycache__", "fdu.egg-info"}
    found = []
    for path in ROOT.rglob("*"):
        if path.is_dir() or skip & set(path.relative_to(ROOT).parts) or path.suffix not in (
                ".py", ".ipynb", ".md", ".txt", ".toml", ".yml", ".sh", "") or path == Path(__file__):
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if DIGEST_REFERENCE.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert not found, "\n".join(found)
    assert "Novello" in (ROOT / "paper" / "REFERENCES.md").read_text()


def test_a_notebook_run_outside_make_figures_leaves_git_status_clean(monkeypatch):
    """Only `make figures` names the committed folders; a reader's session writes to scratch/, ignored."""
    import shutil
    import subprocess

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fdu import paths, plotting

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        import pytest

        pytest.skip("not a git checkout")
    monkeypatch.delenv("FDU_FIGURES_DIR", raising=False)
    monkeypatch.delenv("FDU_RESULTS_DIR", raising=False)
    before = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    plotting.savefig(fig, "zz_interactive_probe")
    plt.close(fig)
    (paths.results_dir() / "zz_interactive_probe.json").write_text("{}")
    try:
        assert paths.SCRATCH in paths.figures_dir().parents and paths.SCRATCH in paths.results_dir().parents
        assert list(paths.figures_dir().glob("zz_interactive_probe.*"))
        after = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
        assert after == before
        assert paths.report_results_dir() == paths.COMMITTED_RESULTS
    finally:
        probes = [*paths.figures_dir().glob("zz_interactive_probe.*"),
                  paths.results_dir() / "zz_interactive_probe.json"]
        for path in probes:
            path.unlink()
