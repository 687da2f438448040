"""The executed notebooks in ``notebooks/executed/``: every notebook with its outputs, committed so that a
reader sees the figures, tables and printed numbers on the repository's web page without running
anything (GitHub renders ``.ipynb`` files, math and images included).

``make figures`` writes them with papermill and then calls :func:`clean` on each, which drops what changes
from run to run without the computation changing (papermill's and Jupyter's timestamps and durations,
progress bars (on stderr, or as widgets) and warnings, the ids of interactive widgets, which no static page
can show), so that a rerun on the same machine changes nothing but the wall times some notebooks print.
:func:`stale`
says which executed notebooks no longer match their sources: a changed code cell needs the notebook to
be run again; a changed markdown cell only needs :func:`sync_markdown` (``python -m fdu.executed sync``),
which copies the prose across by cell id.

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


WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
PROGRESS_MODELS = ("FloatProgressModel", "IntProgressModel")


def _is_progress_bar(model_id: str, state: dict) -> bool:
    """Whether a widget is (or contains) a progress bar, as tqdm's notebook bars are."""
    model = state.get(model_id)
    if model is None:
        return False
    if model.get("model_name") in PROGRESS_MODELS:
        return True
    children = model.get("state", {}).get("children", [])
    return any(_is_progress_bar(c.removeprefix("IPY_MODEL_"), state) for c in children if isinstance(c, str))


def _clean_output(out: dict, state: dict) -> dict | None:
    if out.get("output_type") == "stream" and out.get("name") == "stderr":
        return None
    data = out.get("data")
    if data and WIDGET_VIEW in data:
        if _is_progress_bar(data[WIDGET_VIEW].get("model_id", ""), state):
            return None                  # a progress bar: nothing to read once the run is over
        return {"output_type": "display_data", "metadata": {}, "data": {"text/plain": [WIDGET_NOTE]}}
    return out


def clean(path: Path) -> None:
    """Strip an executed notebook of what varies between identical runs (see the module docstring)."""
    nb = _read(path)
    state = nb.get("metadata", {}).get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    for key in ("papermill", "widgets"):
        nb.get("metadata", {}).pop(key, None)
    for cell in nb["cells"]:
        for key in ("papermill", "execution"):
            cell.get("metadata", {}).pop(key, None)
        if cell.get("metadata", {}).get("tags") == []:   # papermill adds empty tags to some cells, not others
            del cell["metadata"]["tags"]
        if cell["cell_type"] == "code":
            cell["outputs"] = [o for o in (_clean_output(x, state) for x in cell.get("outputs", [])) if o is not None]
    _write(path, nb)


def _code(nb: dict) -> list[tuple[str, str]]:
    return [(c.get("id", ""), "".join(c["source"])) for c in nb["cells"] if c["cell_type"] == "code"]


def _markdown(nb: dict) -> list[tuple[str, str]]:
    return [(c.get("id", ""), "".join(c["source"])) for c in nb["cells"] if c["cell_type"] == "markdown"]


def stale(source: Path, executed: Path) -> dict:
    """How ``executed`` differs from ``source``: ``{"missing": bool, "cells": bool, "code": [cell ids],
    "markdown": [cell ids]}``. ``cells``: the code cells were added, removed or reordered; ``code``: code
    cells whose source changed; ``markdown``: prose cells changed, added or removed (or the order of the
    prose among the code changed)."""
    if not Path(executed).exists():
        return {"missing": True, "cells": True, "code": [], "markdown": []}
    src, ex = _read(source), _read(executed)
    code_src, code_ex = _code(src), _code(ex)
    same_cells = [i for i, _ in code_src] == [i for i, _ in code_ex]
    changed_code = [i for (i, a), (_, b) in zip(code_src, code_ex) if a != b] if same_cells else []
    md_ex = dict(_markdown(ex))
    changed_md = [i for i, text in _markdown(src) if md_ex.get(i) != text]
    changed_md += [i for i in md_ex if i not in dict(_markdown(src))]
    def layout(nb):
        return [(c.get("id"), c["cell_type"]) for c in nb["cells"]]

    if layout(src) != layout(ex) and not changed_md and same_cells:
        changed_md = ["(order)"]
    return {"missing": False, "cells": not same_cells, "code": changed_code, "markdown": changed_md}


def sync_markdown(source: Path, executed: Path) -> bool:
    """Rebuild ``executed`` with the source's prose (markdown cells changed, added, removed or moved) and
    its own executed code cells; returns whether anything changed. Raises ValueError when a code cell
    changed, or code cells were added, removed or reordered: then the notebook needs running again."""
    diff = stale(source, executed)
    if diff["missing"] or diff["cells"] or diff["code"]:
        why = ("missing" if diff["missing"] else "code cells added, removed or moved" if diff["cells"]
               else "code cells " + ", ".join(diff["code"]))
        raise ValueError(f"{executed} needs running again, not only its prose copied ({why}): "
                         f"make figures, or papermill on {Path(source).name}")
    if not diff["markdown"]:
        return False
    nb, src = _read(executed), _read(source)
    ran = {c["id"]: c for c in nb["cells"] if c["cell_type"] == "code"}
    nb["cells"] = [c if c["cell_type"] != "code" else ran[c["id"]] for c in src["cells"]]
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
