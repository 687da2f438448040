import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """The tiny pipeline (random weights, built from configs) once for every test that reads it; tests
    that damage a model do it on a copy."""
    from fdu.cli import main

    folder = tmp_path_factory.mktemp("tiny")
    assert main(["tiny-pipeline", str(folder), "--sample-size", "8"]) == 0
    return folder
