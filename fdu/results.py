"""Each notebook's measured numbers, written to ``paper/results/<notebook>.json``.

The file records the parameters the numbers were measured under and the package versions, and
no timestamps: running a notebook twice with the same parameters gives the same file.
"""
from __future__ import annotations

import json
import math
import platform
from importlib import metadata

from .paths import REPO_ROOT, results_dir

PACKAGES = ("torch", "numpy", "scipy", "sympy", "mpmath")


def _clean(x):
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)  # JSON has no inf/nan; say it in words
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def save_results(notebook: str, results: dict, parameters: dict) -> str:
    """Write ``<results_dir>/<notebook>.json`` and return its path (relative to the checkout when it lies
    inside); refuses results that lack a key the report reads (:data:`fdu.verdicts.SCHEMA`)."""
    from .verdicts import missing_keys

    missing = missing_keys(notebook, results)
    if missing:
        raise KeyError(f"{notebook}: the results lack {', '.join(missing)}, which fdu.report reads "
                       "(fdu.verdicts.SCHEMA); rename it there and in fdu/report.py together")
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    payload = {"notebook": notebook, "parameters": _clean(parameters), "results": _clean(results),
               "environment": {"python": platform.python_version(), **versions}}
    path = results_dir() / f"{notebook}.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    try:   # relative to the checkout where it lies inside (what an executed notebook shows: the same everywhere)
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def load_results(notebook: str, folder=None) -> dict | None:
    path = (folder or results_dir()) / f"{notebook}.json"
    return json.loads(path.read_text()) if path.exists() else None
