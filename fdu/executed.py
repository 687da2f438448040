"""The executed notebooks in ``notebooks/executed/``: every notebook with its outputs, committed so that a
reader sees the figures, tables and printed numbers on the repository's web page without running
anything (GitHub renders ``.ipynb`` files, math and images included).

``make figures`` writes them with papermill and then calls :func:`clean` on each, which drops what changes
from run to run without the computation changing (papermill's and Jupyter's timestamps and durations,
progress bars and warnings on stderr, the ids of interactive widgets, which no static page can show), so
that a rerun on the same machine rewrites them byte for byte. :func:`stale` says which executed notebooks
no longer match their sources: a changed code cell needs the notebook to be run again; a changed markdown
cell only needs :func:`sync_markdown` (``python -m fdu.executed sync``), which copies the prose across by cell id.

Command line: ``python -m fdu.executed clean|check|sync [NOTEBOOKS_DIR]``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = "[an interactive widget: run the notebook in Jupyter (`make lab`) to use it]"


def _read(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _write(path: Path, nb: dict) -> None:
    Path(path).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _clean_output(out: dict) -> dict | None:
    if out.get("output_type") == "stream" and out.get("name") == "stderr":
        return None
    data = out.get("data")
    if data and WIDGET_VIEW in data:
        return {"output_type": "display_data", "metadata": {}, "data": {"text/plain": [WIDGET_NOTE]}}
    return out


def clean(path: Path) -> None:
    """Strip an executed notebook of what varies between identical runs (see the module docstring)."""
    nb = _read(path)
    for key in ("papermill", "widgets"):
        nb.get("metadata", {}).pop(key, None)
    for cell in nb["cells"]:
        for key in ("papermill", "execution"):
            cell.get("metadata", {}).pop(key, None)
        if cell["cell_type"] == "code":
            cell["outputs"] = [o for o in map(_clean_output, cell.get("outputs", [])) if o is not None]
    _write(path, nb)


def _cells(nb: dict) -> list[tuple[str, str, str]]:
    return [(c.get("id", ""), c["cell_type"], "".join(c["source"])) for c in nb["cells"]]


def stale(source: Path, executed: Path) -> dict:
    """How ``executed`` differs from ``source``: ``{"missing": bool, "code": [cell ids], "markdown":
    [cell ids], "cells": bool}`` (``cells``: the list of cell ids or types differs)."""
    if not Path(executed).exists():
        return {"missing": True, "code": [], "markdown": [], "cells": True}
    src, ex = _cells(_read(source)), _cells(_read(executed))
    same_cells = [(i, t) for i, t, _ in src] == [(i, t) for i, t, _ in ex]
    changed = [(i, t) for (i, t, s), (_, _, e) in zip(src, ex) if s != e] if same_cells else []
    return {"missing": False, "cells": not same_cells,
            "code": [i for i, t in changed if t == "code"], "markdown": [i for i, t in changed if t == "markdown"]}


def sync_markdown(source: Path, executed: Path) -> bool:
    """Copy the markdown cells of ``source`` into ``executed`` (same cells, only prose changed); returns
    whether anything changed. Raises ValueError when code or the cell list changed: rerun the notebook."""
    diff = stale(source, executed)
    if diff["missing"] or diff["cells"] or diff["code"]:
        why = ("missing" if diff["missing"] else "cells added, removed or moved" if diff["cells"]
               else "code cells " + ", ".join(diff["code"]))
        raise ValueError(f"{executed} needs running again, not only its prose copied ({why}): "
                         f"make figures, or papermill on {Path(source).name}")
    if not diff["markdown"]:
        return False
    nb, src = _read(executed), {c["id"]: c for c in _read(source)["cells"]}
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            cell["source"] = src[cell["id"]]["source"]
    _write(executed, nb)
    return True


def pairs(folder: Path = Path("notebooks")) -> list[tuple[Path, Path]]:
    """(source, executed) for every numbered notebook in ``folder``."""
    return [(p, p.parent / "executed" / p.name) for p in sorted(Path(folder).glob("[0-9][0-9]_*.ipynb"))]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("clean", "check", "sync"):
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    folder = Path(argv[1]) if len(argv) > 1 else Path("notebooks")
    status = 0
    for source, executed in pairs(folder):
        if argv[0] == "clean":
            if executed.exists():
                clean(executed)
        elif argv[0] == "sync":
            try:
                if sync_markdown(source, executed):
                    print(f"prose copied into {executed}")
            except ValueError as err:
                print(err, file=sys.stderr)
                status = 1
        else:
            diff = stale(source, executed)
            if diff["missing"] or diff["cells"] or diff["code"] or diff["markdown"]:
                print(f"{executed}: {diff}", file=sys.stderr)
                status = 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
