"""Where figures and results go: the repository's folders, or those named by the environment.

``FDU_FIGURES_DIR`` and ``FDU_RESULTS_DIR`` redirect them (the tests run every notebook in quick
mode into a temporary folder, so the committed figures are only ever written by ``make figures``).
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def figures_dir() -> Path:
    path = Path(os.environ.get("FDU_FIGURES_DIR", REPO_ROOT / "figures"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def results_dir() -> Path:
    path = Path(os.environ.get("FDU_RESULTS_DIR", REPO_ROOT / "paper" / "results"))
    path.mkdir(parents=True, exist_ok=True)
    return path
