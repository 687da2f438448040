"""Every notebook runs under papermill in quick mode, and the committed notebooks are clean."""
import json
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_every_notebook_is_numbered_and_run_by_make_figures():
    names = [p.stem for p in NOTEBOOKS]
    assert [n[:2] for n in names] == [f"{i:02d}" for i in range(len(names))], names  # 00 is the prologue
    from fdu.report import NOTEBOOKS as REPORTED

    assert set(REPORTED) <= set(names), "the report reads a notebook that does not exist"
    makefile = (ROOT / "Makefile").read_text()
    assert "notebooks/[0-9][0-9]_*.ipynb" in makefile  # make figures runs every numbered notebook


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_has_no_outputs_and_a_parameters_cell(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)
    params = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1 and "quick" in "".join(params[0]["source"])
    from papermill.translators import PythonTranslator  # every parameter can be overridden with -p

    names = [p.name for p in PythonTranslator.inspect(nbformat.v4.new_code_cell("".join(params[0]["source"])))]
    assigned = [line.split("=")[0].strip() for line in "".join(params[0]["source"]).splitlines()
                if line.strip() and not line.startswith("#")]
    assert names == assigned
    first = "".join(nb["cells"][0]["source"])
    assert "What you will learn" in first and "How long it takes" in first
    assert "Exercises" in "".join(nb["cells"][-1]["source"])


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    """One results folder for every quick run, so the report is built from all of them."""
    return tmp_path_factory.mktemp("results")


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_quick_mode_and_the_report_reads_its_results(path, tmp_path, monkeypatch, quick_results):
    import papermill

    from fdu import report
    from fdu.verdicts import missing_keys

    monkeypatch.setenv("FDU_FIGURES_DIR", str(tmp_path / "figures"))
    monkeypatch.setenv("FDU_RESULTS_DIR", str(quick_results))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    without = report.build(quick_results)
    papermill.execute_notebook(str(path), str(tmp_path / path.name), parameters={"quick": True},
                               kernel_name="python3", cwd=str(path.parent), progress_bar=False)
    assert list((tmp_path / "figures").glob("*.png")), "the notebook saved no figure"
    result = json.loads((quick_results / f"{path.stem}.json").read_text())
    assert result["parameters"]["quick"] is True and result["results"]
    assert missing_keys(path.stem, result["results"]) == []
    # every key the report reads is there: building it raises no KeyError, and this notebook's rows change
    if path.stem in report.NOTEBOOKS:
        assert report.build(quick_results) != without
    else:  # the prologue: no claim of the paper, so no row
        assert report.build(quick_results) == without
