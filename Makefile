# fdu: two commands on a new machine.  `make figures` (the main job) and `make test`.
# Both create a local virtual environment (.venv) with the pinned versions first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
EXECUTED  := notebooks/executed

.PHONY: install test figures paper bench clean help mini-sd mini-flow lab executed

help:
	@echo "make figures   run every notebook with papermill: figures/ and paper/results/, then paper/"
	@echo "make test      ruff, then the unit tests + every notebook in quick mode"
	@echo "make paper     rebuild paper/REPRODUCTION.md from paper/results/*.json"
	@echo "make lab       open the notebooks in JupyterLab with the project's kernel (writes only to scratch/)"
	@echo "make executed  copy edited prose into notebooks/executed/ and check that none is stale"
	@echo "make bench     benchmarks (speed of the losses, wall time of make test / figures)"
	@echo "make mini-sd   retrain the shipped mini Stable Diffusion from scratch (~40 min on 2 CPU cores)"
	@echo "make mini-flow retrain the shipped mini flow-matching model's transformer (~35 min on one CPU core)"

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[notebooks,test]"
	touch $(STAMP)

test: install
	$(VENV)/bin/ruff check fdu tests benchmarks
	HF_HUB_OFFLINE=1 MPLBACKEND=Agg $(PY) -m pytest

figures: install
	@mkdir -p $(EXECUTED)
	@set -e; for nb in $(NOTEBOOKS); do \
		echo "== papermill $$nb"; \
		HF_HUB_OFFLINE=1 FDU_FIGURES_DIR=$(CURDIR)/figures FDU_RESULTS_DIR=$(CURDIR)/paper/results \
			$(PY) -m papermill --log-level WARNING -k python3 \
			--cwd notebooks $$nb $(EXECUTED)/$$(basename $$nb); \
	done
	$(PY) -m fdu.executed clean
	$(MAKE) paper

# the executed notebooks are committed (readable on the repository's page); after editing only prose,
# this copies it across instead of rerunning; it fails, naming them, where code changed
executed: install
	$(PY) -m fdu.executed sync
	$(PY) -m fdu.executed check

# JupyterLab with ipywidgets, on the project's virtual environment; LAB_ARGS passes options (e.g. --no-browser)
# (autosave off, notebooks/.jupyter/overrides.json: a run changes no tracked file unless you save it)
LAB_SETTINGS := $(VENV)/share/jupyter/lab/settings
lab: install
	@mkdir -p $(LAB_SETTINGS) && cp notebooks/.jupyter/overrides.json $(LAB_SETTINGS)/overrides.json
	cd notebooks && HF_HUB_OFFLINE=1 ../$(VENV)/bin/jupyter lab $(LAB_ARGS)

paper: install
	FDU_RESULTS_DIR=$(CURDIR)/paper/results $(PY) -m fdu.report

bench: install
	$(PY) benchmarks/bench_losses.py
	$(PY) benchmarks/bench_sd_step.py
	$(PY) benchmarks/bench_pipeline.py

# a one-time build, never run by CI: retrains the mini Stable Diffusion and its CLIP into runs/mini-sd
# (resumable), then ships them into fdu/sd/data/mini with a manifest of the recipe and measured quality
mini-sd: install
	HF_HUB_OFFLINE=1 $(PY) -m fdu mini-sd runs/mini-sd --train --ship

mini-flow: install
	HF_HUB_OFFLINE=1 $(PY) -m fdu mini-flow runs/mini-flow --train --ship

clean:
	rm -rf .pytest_cache scratch
