"""`make lab` on this checkout: JupyterLab starts on the project's virtual environment, serves the
notebooks, has the ipywidgets extension, autosave off, and its kernel is the project's Python; and the
executed notebooks in notebooks/executed/ are the current sources' (fdu.executed)."""
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from fdu import executed

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    children = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(proc.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out += children.get(p, [])
        todo += children.get(p, [])
    return out


def test_make_lab_serves_the_notebooks_with_widgets_and_the_project_kernel():
    stamp = VENV / ".installed"
    newest = max((ROOT / f).stat().st_mtime for f in ("pyproject.toml", "constraints.txt"))
    if not stamp.exists() or stamp.stat().st_mtime < newest:
        pytest.skip("no up-to-date .venv in this checkout (run `make install`, or `make test`, which does)")
    port, token = _free_port(), "fdu-test"
    args = f"--no-browser --allow-root --port={port} --ServerApp.token={token} --ServerApp.port_retries=0"
    before = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    proc = subprocess.Popen(["make", "-s", "lab", f"LAB_ARGS={args}"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)

    def get(path, data=None):
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}?token={token}", data=data,
                                     method="POST" if data is not None else "GET")
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    try:
        for _ in range(120):
            try:
                get("/api/status")
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
                time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not answer within 60 s")
        names = {item["name"] for item in get("/api/contents")["content"]}
        assert {p.name for p, _ in executed.pairs(ROOT / "notebooks")} <= names
        extensions = {e["name"]: e["enabled"] for e in get("/lab/api/extensions")}
        assert extensions.get("jupyter-widgets-jupyterlab-manager") is True, extensions
        schema = get("/lab/api/settings/@jupyterlab/docmanager-extension:plugin")["schema"]
        assert schema["properties"]["autosave"]["default"] is False
        kernel = get("/api/kernels", data=json.dumps({"name": "python3"}).encode())
        assert kernel["name"] == "python3"
        for _ in range(40):  # the kernel process: the project's Python running ipykernel
            cmds = [Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0") for p in _descendants(proc.pid)
                    if Path(f"/proc/{p}/cmdline").exists()]
            kernels = [c for c in cmds if b"ipykernel_launcher" in b" ".join(c)]
            if kernels:
                break
            time.sleep(0.25)
        assert kernels and all(Path(c[0].decode()).parent.parent == VENV for c in kernels), kernels
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    after = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    assert after == before


@pytest.mark.parametrize("source,target", executed.pairs(ROOT / "notebooks"), ids=lambda p: p.name)
def test_executed_notebook_is_current_and_complete(source, target):
    """Every notebook has its executed copy, with the source's cells (rerun it, or `make executed` after
    editing prose only), an output under every code cell that prints or draws, and no error."""
    diff = executed.stale(source, target)
    assert not diff["missing"], f"{target} is missing: make figures"
    assert not (diff["cells"] or diff["code"] or diff["markdown"]), (
        f"{target} is stale ({diff}): `make executed` copies edited prose; a changed code cell needs a rerun")
    nb = json.loads(target.read_text(encoding="utf-8"))
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"]]
    assert not [o for o in outputs if o["output_type"] == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure embedded: run without MPLBACKEND=Agg"
    assert not [c for c in nb["cells"] if "papermill" in c.get("metadata", {}) or "execution" in c.get("metadata", {})]


def test_clean_strips_what_varies_and_sync_copies_prose_only(tmp_path):
    src = {"cells": [{"id": "a", "cell_type": "markdown", "metadata": {}, "source": ["new prose"]},
                     {"id": "b", "cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
                      "source": ["print(1)"]}], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    ran = json.loads(json.dumps(src))
    ran["cells"][0]["source"] = ["old prose"]
    ran["metadata"]["papermill"] = {"start_time": "now"}
    ran["cells"][1]["metadata"] = {"papermill": {"duration": 1.0}, "execution": {"iopub.status.idle": "now"}}
    ran["cells"][1]["outputs"] = [{"output_type": "stream", "name": "stderr", "text": ["10%|#"]},
                                  {"output_type": "stream", "name": "stdout", "text": ["1\n"]},
                                  {"output_type": "display_data", "metadata": {},
                                   "data": {executed.WIDGET_VIEW: {"model_id": "x"}, "text/plain": ["w"]}},
                                  {"output_type": "display_data", "metadata": {},
                                   "data": {executed.WIDGET_VIEW: {"model_id": "bar"}, "text/plain": ["10%"]}}]
    ran["metadata"]["widgets"] = {executed.WIDGET_STATE: {"state": {
        "x": {"model_name": "VBoxModel", "state": {"children": []}},
        "bar": {"model_name": "HBoxModel", "state": {"children": ["IPY_MODEL_p"]}},
        "p": {"model_name": "FloatProgressModel", "state": {}}}}}
    s, e = tmp_path / "s.ipynb", tmp_path / "e.ipynb"
    s.write_text(json.dumps(src))
    e.write_text(json.dumps(ran))
    executed.clean(e)
    nb = json.loads(e.read_text())
    assert "papermill" not in nb["metadata"] and nb["cells"][1]["metadata"] == {}
    assert [o.get("name") for o in nb["cells"][1]["outputs"]] == ["stdout", None]
    assert nb["cells"][1]["outputs"][1]["data"] == {"text/plain": [executed.WIDGET_NOTE]}
    src["cells"].append({"id": "c", "cell_type": "markdown", "metadata": {}, "source": ["a new section"]})
    s.write_text(json.dumps(src))
    assert executed.stale(s, e)["markdown"] == ["a", "c"]
    assert executed.sync_markdown(s, e) is True and executed.stale(s, e)["markdown"] == []
    synced = json.loads(e.read_text())
    assert [c["id"] for c in synced["cells"]] == ["a", "b", "c"] and synced["cells"][1]["outputs"]
    src["cells"][1]["source"] = ["print(2)"]
    s.write_text(json.dumps(src))
    with pytest.raises(ValueError, match="code cells b"):
        executed.sync_markdown(s, e)
