# fdu: two commands on a new machine.  `make figures` (the main job) and `make test`.
# Both create a local virtual environment (.venv) with the pinned versions first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
EXECUTED  := notebooks/executed

.PHONY: install test figures paper bench clean help mini-sd

help:
	@echo "make figures   run every notebook with papermill: figures/ and paper/results/, then paper/"
	@echo "make test      ruff, then the unit tests + every notebook in quick mode"
	@echo "make paper     rebuild paper/REPRODUCTION.md from paper/results/*.json"
	@echo "make bench     benchmarks (speed of the losses, wall time of make test / figures)"
	@echo "make mini-sd   retrain the shipped mini Stable Diffusion from scratch (~40 min on 2 CPU cores)"

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
		HF_HUB_OFFLINE=1 MPLBACKEND=Agg FDU_FIGURES_DIR=$(CURDIR)/figures FDU_RESULTS_DIR=$(CURDIR)/paper/results \
			$(PY) -m papermill --log-level WARNING -k python3 \
			--cwd notebooks $$nb $(EXECUTED)/$$(basename $$nb); \
	done
	$(MAKE) paper

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

clean:
	rm -rf $(EXECUTED) .pytest_cache
