"""Where figures and results go.

Only ``make figures`` writes the committed ``figures/`` and ``paper/results/``: it names them in
``FDU_FIGURES_DIR`` and ``FDU_RESULTS_DIR``. Anything else (a reader running a notebook in Jupyter,
a script) writes to ``scratch/figures`` and ``scratch/results`` (ignored by git), so an interactive
session leaves ``git status`` clean. The tests point both variables at a temporary folder. The
report reads the committed results unless ``FDU_RESULTS_DIR`` names others.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
COMMITTED_FIGURES = REPO_ROOT / "figures"
COMMITTED_RESULTS = REPO_ROOT / "paper" / "results"
SCRATCH = REPO_ROOT / "scratch"


def figures_dir() -> Path:
    """Where figures are written: ``$FDU_FIGURES_DIR``, else ``scratch/figures``."""
    path = Path(os.environ.get("FDU_FIGURES_DIR") or SCRATCH / "figures")
    path.mkdir(parents=True, exist_ok=True)
    return path


def results_dir() -> Path:
    """Where results JSONs are written: ``$FDU_RESULTS_DIR``, else ``scratch/results``."""
    path = Path(os.environ.get("FDU_RESULTS_DIR") or SCRATCH / "results")
    path.mkdir(parents=True, exist_ok=True)
    return path


def report_results_dir() -> Path:
    """Where the report reads results: ``$FDU_RESULTS_DIR``, else the committed ``paper/results``."""
    return Path(os.environ.get("FDU_RESULTS_DIR") or COMMITTED_RESULTS)


def writable_folder(path, what: str) -> Path:
    """``path`` as a folder that exists and can be written to (created if missing), or a
    ValueError naming ``what`` (e.g. ``--output``) and the problem: checked before any work."""
    import tempfile

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} is a file, not a folder: choose a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise ValueError(f"{what} {path} cannot be written to ({err.strerror or err}): choose a folder you "
                         "can write to") from None
    return path
