# fisher-boundary: `make reproduce` runs the study on the embedded default, `make test` runs the tests.
# Both create the virtual environment (.venv) on first use.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The CPU build of torch lies on this project's machines; on a GPU box PyPI's default build is the CUDA one.
TORCH ?= torch==2.13.0
KERNEL := fisher-boundary

ARCH ?= tiny
# A model revision (hub branch/tag/commit, or tiny's step<N>) for `make reproduce`; REVISIONS lists those `make dynamics` walks.
REVISION ?=
REVISIONS ?=
MODEL ?=
CORPORA ?=
SEEDS ?=
# The local tier (MODEL=<folder>) is reported under RUN, by default the folder's name.
RUN ?= $(notdir $(patsubst %/,%,$(MODEL)))
RUN_NAME := $(if $(MODEL),$(RUN),$(ARCH)$(if $(REVISION),-$(REVISION)))
# Registry names have their own parameter file; a hub id uses pythia's (the study's settings), a folder local.yaml.
PARAMS := $(if $(MODEL),params/local.yaml,$(if $(wildcard params/$(ARCH).yaml),params/$(ARCH).yaml,params/pythia.yaml))
RUN_DIR := runs/$(RUN_NAME)
NOTEBOOKS := $(sort $(wildcard notebooks/0*.ipynb))
EXECUTED := $(patsubst notebooks/%,$(RUN_DIR)/%,$(NOTEBOOKS))
PAPERMILL_ARGS := -k $(KERNEL) -f $(PARAMS) --cwd notebooks \
	$(if $(MODEL),-p arch "$(abspath $(MODEL))" -p run_name "$(RUN_NAME)",-p arch "$(ARCH)") \
	$(if $(CORPORA),-y "corpora: [$(foreach c,$(CORPORA),'$(c)',)]") \
	$(if $(SEEDS),-y "seeds: [$(foreach s,$(SEEDS),$(s),)]") \
	$(if $(REVISION),-p revision "$(REVISION)") \
	$(if $(REVISIONS),-y "revisions: [$(foreach r,$(REVISIONS),'$(r)',)]")

.PHONY: all venv test test-unit test-integration test-notebooks bench bench-real bench-layers gpu-check reproduce dynamics tiny-model paper clean help
all: help

help:
	@echo "make reproduce [ARCH=tiny|pythia|llama|qwen|<hub id>] [SEEDS='0 1 2 3'] [REVISION=step<N>]   run notebooks 01-09"
	@echo "make reproduce MODEL=<hf folder> CORPORA='<file.jsonl> ...'            the local tier"
	@echo "make dynamics [ARCH=tiny|pythia REVISIONS='step1000 step8000 ...']       notebook 10 over training checkpoints"
	@echo "make tiny-model   retrain the shipped embedded model models/tiny from scratch (~40 min, one core)"
	@echo "make paper        assemble results/summary.md across the architectures run so far"
	@echo "make test         unit + integration + notebook tests (creates .venv)"
	@echo "make test-unit | test-integration | test-notebooks | bench"
	@echo "make bench-real | gpu-check   real-size head benchmark; GPU check (CPU dry run without CUDA)"
	@echo "make bench-layers   layer_boundary against the naive full-context search (tiny, ~3 min)"

venv: $(STAMP)
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (fisher-boundary)" >/dev/null
	touch $@

test: $(STAMP)
	$(PY) -m pytest -q

test-unit: $(STAMP)
	$(PY) -m pytest -q -m "not integration and not notebooks"

test-integration: $(STAMP)
	$(PY) -m pytest -q -m integration

test-notebooks: $(STAMP)
	$(PY) -m pytest -q -m notebooks

# BENCH_ARGS="--vocab 5000" for a quicker look; the default is the issue's V = 50 000 problem (~12 min on 2 cores).
bench: $(STAMP)
	$(PY) benchmarks/bench_boundary.py $(BENCH_ARGS)

# The real tier's LM heads at full size (pythia-1b, Llama-3.2-1B, Qwen3-1.7B), 1-layer trunk: s/position and peak memory per stage.
bench-real: $(STAMP)
	$(PY) benchmarks/bench_real.py $(BENCH_REAL_ARGS)

# layer_boundary against the naive method (full-context forward at every step, doubling then 50 bisections).
bench-layers: $(STAMP)
	$(PY) benchmarks/bench_layers.py $(BENCH_LAYERS_ARGS)

# For a session with a GPU (no venv needed: the device image's python3); without CUDA, a CPU dry run that says what it skipped.
gpu-check:
	PYTHONPATH=. $(if $(wildcard $(PY)),$(PY),python3) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

reproduce: $(EXECUTED)
	@echo "executed notebooks: $(RUN_DIR)/  tables: results/$(RUN_NAME)/  figures: figures/$(RUN_NAME)/"

# One pattern rule per notebook: an unchanged notebook with unchanged inputs is not rerun, and
# `make -j` runs 02 beside 03 and 04-07 side by side once the sweep exists.
$(RUN_DIR)/%.ipynb: notebooks/%.ipynb $(PARAMS) $(STAMP)
	@mkdir -p $(RUN_DIR)
	$(PY) -m papermill $< $@.partial $(PAPERMILL_ARGS) --log-output --progress-bar
	mv $@.partial $@

$(RUN_DIR)/02_fisher_geometry.ipynb $(RUN_DIR)/03_direction_sweep.ipynb: $(RUN_DIR)/01_sample_positions.ipynb
# 08 and 09 read notebook 01's sample only.
$(RUN_DIR)/08_layer_pullback.ipynb $(RUN_DIR)/09_interpolation_plateaus.ipynb: $(RUN_DIR)/01_sample_positions.ipynb
$(RUN_DIR)/04_closed_form_exactness.ipynb $(RUN_DIR)/05_direction_classes.ipynb \
$(RUN_DIR)/06_isotonic_calibration.ipynb $(RUN_DIR)/07_entropy_stratification.ipynb: $(RUN_DIR)/03_direction_sweep.ipynb

# Notebook 10 reruns every time (REVISIONS may have changed); each revision's measurements are cached, so only new ones cost.
dynamics: $(RUN_DIR)/01_sample_positions.ipynb
	@rm -f $(RUN_DIR)/10_training_dynamics.ipynb
	$(MAKE) --no-print-directory $(RUN_DIR)/10_training_dynamics.ipynb
	@echo "executed notebook: $(RUN_DIR)/10_training_dynamics.ipynb  tables: results/$(RUN_NAME)/dynamics_*  figures: figures/$(RUN_NAME)/"

tiny-model: $(STAMP)
	$(PY) -m fisherlib.cli tiny --train --output models/tiny

paper: $(STAMP)
	$(PY) -m fisherlib.cli paper

clean:
	rm -rf runs .pytest_cache
