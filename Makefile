# fisher-boundary: `make reproduce` runs the study on the embedded default, `make test` runs the tests.
# Both create the virtual environment (.venv) on first use.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch is installed from TORCH_INDEX: the CPU build by default (PyPI's Linux wheel is the multi-GB CUDA
# one). On a GPU box: make reproduce TORCH_INDEX=https://download.pytorch.org/whl/cu128 (or https://pypi.org/simple).
# Changing TORCH or TORCH_INDEX reinstalls torch in an existing environment.
TORCH ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_SPEC := $(VENV)/.torch-spec
KERNEL := fisher-boundary

ARCH ?= tiny
# A model revision (hub branch/tag/commit, or tiny's step<N>) for `make reproduce`; REVISIONS lists those `make dynamics` walks.
REVISION ?=
REVISIONS ?=
MODEL ?=
# DEVICE=auto spreads a model larger than one GPU over every GPU (accelerate's device_map="auto"); cuda:1, cpu, ...
DEVICE ?=
CORPORA ?=
SEEDS ?=
ifneq ($(wildcard $(ARCH)/config.json),)
$(error ARCH=$(ARCH) is a model folder: give it as MODEL=$(ARCH) (ARCH names a registry model or a hub id))
endif
# Every model gets its own run name: the registry name or hub id (org--name), plus the revision; a local
# folder's parent and name plus a hash of its absolute path, so two .../hf folders never share a run.
# RUN=<name> chooses another.
MODEL_PATH := $(abspath $(MODEL))
MODEL_RUN := $(notdir $(patsubst %/,%,$(dir $(MODEL_PATH))))-$(notdir $(MODEL_PATH))-$(shell printf '%s' '$(MODEL_PATH)' | sha256sum | cut -c1-6)
RUN ?= $(if $(MODEL),$(MODEL_RUN),$(subst /,--,$(ARCH)))$(if $(REVISION),-$(REVISION))
RUN_NAME := $(RUN)
# Registry names have their own parameter file; a hub id uses pythia's (the study's settings), a folder local.yaml.
PARAMS := $(if $(MODEL),params/local.yaml,$(if $(wildcard params/$(ARCH).yaml),params/$(ARCH).yaml,params/pythia.yaml))
RUN_DIR := runs/$(RUN_NAME)
# Notebooks write into the run's staging folder; `publish` copies it to results/ and figures/ only once
# every notebook asked for has succeeded. The cache is shared by both.
STAGE := $(RUN_DIR)/staged
RUN_KEY := $(RUN_DIR)/inputs.json
LIBRARY := $(sort $(wildcard fisherlib/*.py fisherlib/*/*.py)) pyproject.toml
# Every numbered notebook but 10 (training dynamics: `make dynamics`, over REVISIONS).
NOTEBOOKS := $(sort $(filter-out notebooks/10_%,$(wildcard notebooks/[0-9][0-9]_*.ipynb)))
EXECUTED := $(patsubst notebooks/%,$(RUN_DIR)/%,$(NOTEBOOKS))
# The run's parameters, as the notebooks and the sharded measurement step (`fisherlib measure`) take them.
PARAM_ARGS := -f $(PARAMS) \
	-p arch "$(if $(MODEL),$(MODEL_PATH),$(ARCH))" -p run_name "$(RUN_NAME)" -p cache_dir results/$(RUN_NAME)/cache \
	$(if $(CORPORA),-y "corpora: [$(foreach c,$(CORPORA),'$(c)',)]") \
	$(if $(SEEDS),-y "seeds: [$(foreach s,$(SEEDS),$(s),)]") \
	$(if $(REVISION),-p revision "$(REVISION)") \
	$(if $(DEVICE),-p device "$(DEVICE)") \
	$(if $(REVISIONS),-y "revisions: [$(foreach r,$(REVISIONS),'$(r)',)]")
RUNNER_ARGS := --run $(RUN_NAME) --kernel $(KERNEL) --cwd notebooks $(PARAM_ARGS) \
	-p results_root $(STAGE)/results -p figures_root $(STAGE)/figures
# NPROC=N > 1: the sample, the direction sweep, the layer study and the steering budgets (and `make dynamics`' revisions) are measured
# first by N processes (torchrun; gloo on CPU, one GPU each with CUDA), into the cache the notebooks then read.
NPROC ?= 1
ifneq ($(shell printf '%s' '$(NPROC)' | grep -Ex '[1-9][0-9]*'),$(NPROC))
$(error NPROC must be a positive integer, got '$(NPROC)')
endif
ifeq ($(DEVICE),auto)
ifneq ($(NPROC),1)
$(error DEVICE=auto spreads one model over every GPU in one process, so it cannot run with NPROC=$(NPROC): drop NPROC, or DEVICE=auto)
endif
endif
# A failed step ends with fisherlib's own reason (each rank's `error: …` line), below torchrun's report; the whole
# output is in $(RUN_DIR)/logs/measure.log.
TORCHRUN = set -o pipefail; mkdir -p $(RUN_DIR)/logs; $(VENV)/bin/python -m torch.distributed.run --nproc_per_node $(NPROC) -m fisherlib.run.cli
MEASURED = 2>&1 | tee $(RUN_DIR)/logs/measure.log || { grep -h '^error: ' $(RUN_DIR)/logs/measure.log | sort -u | tail -n 2; \
	echo "fisherlib measure failed on $(NPROC) processes: the full output is in $(RUN_DIR)/logs/measure.log"; exit 1; }

.PHONY: all venv constraints lint test test-unit test-integration test-notebooks test-architectures readme verify bench bench-real bench-layers bench-steering bench-distributed bench-study grid gpu-check reproduce dynamics tiny-model paper book clean help
all: help

help:
	@echo "make reproduce [ARCH=tiny|pythia|llama|qwen|<hub id>] [SEEDS='0 1 2 3'] [REVISION=step<N>]   run notebooks 01-09 and 11"
	@echo "make reproduce MODEL=<hf folder> CORPORA='DOMAIN=PATH ...'              the local tier (PATH: .jsonl or .txt)"
	@echo "  RUN=<name> names the run (default: the model); TORCH=... TORCH_INDEX=<pip index> choose the torch build"
	@echo "  NPROC=N measures the sample, the sweep, the layer study and the steering budgets with N processes first (torchrun: one GPU each, or gloo on CPUs)"
	@echo "make dynamics [ARCH=tiny|pythia REVISIONS='step1000 step8000 ...']       notebook 10 over training checkpoints"
	@echo "make tiny-model   retrain the shipped embedded model models/tiny from scratch (~75 min, one core)"
	@echo "make grid ARCHS='pythia EleutherAI/pythia-410m' [REVISIONS=...] [SEEDS=...] [EXECUTOR=slurm|local]   one job per run (submitit)"
	@echo "make verify [RUN=tiny] [AGAINST=<folder>]   did the rerun reproduce the committed run? (tables, verdicts, notebooks' text)"
	@echo "make paper        assemble results/summary.md across the architectures run so far"
	@echo "make readme       rewrite README.md's results block from results/tiny/ (RUN=... for another run)"
	@echo "make book         the static site of every complete run: build/book/html/index.html (offline)"
	@echo "make test         unit + integration + notebook tests (creates .venv)"
	@echo "make lint         ruff check and ruff format --check over the code (settings in pyproject.toml)"
	@echo "make constraints  rewrite constraints.txt (the exact versions the set-up installs) from .venv"
	@echo "make test-unit | test-integration | test-notebooks | test-architectures | bench"
	@echo "make bench-real | gpu-check   real-size head benchmark; GPU check (CPU dry run without CUDA)"
	@echo "make bench-layers   layer_boundary against the naive full-context search (tiny, ~3 min)"
	@echo "make bench-steering   closed-form steering budget against bisection with full passes (tiny, ~1 min)"
	@echo "make bench-study  the whole study notebook by notebook from an empty cache (BENCH_STUDY_ARGS='--arch smollm2 --fixture-corpora')"
	@echo "make bench-distributed   the sharded sweep, layer study and steering budgets with 1 and 2 processes (tiny, ~6 min)"

venv: $(STAMP)
# The two stamps below are brought up to date while make reads this file, before it decides what to rebuild,
# so `make -n` shows exactly what would run. $(TORCH_SPEC) is rewritten only when TORCH or TORCH_INDEX changed
# (the set-up then reruns); $(RUN_KEY) only when an input of the run changed (its notebooks then rerun).
ifneq ($(filter-out help clean gpu-check,$(MAKECMDGOALS)),)
TORCH_LINE := $(TORCH) --index-url $(TORCH_INDEX)
$(shell mkdir -p $(VENV) && { echo "$(TORCH_LINE)" | cmp -s - $(TORCH_SPEC) || echo "$(TORCH_LINE)" > $(TORCH_SPEC); })
endif
# A dry run (make -n) leaves the key alone and compares against a copy, so it never changes what a real run does.
DRY_RUN := $(findstring n,$(firstword -$(MAKEFLAGS)))
ifneq ($(filter reproduce dynamics runs/%,$(MAKECMDGOALS)),)
KEY_CHANGES := $(shell $(if $(wildcard $(PY)),$(PY),$(PYTHON)) tools/runs.py key --out $(RUN_KEY) --run $(RUN_NAME) \
	--arch "$(ARCH)" --model "$(MODEL)" --revision "$(REVISION)" --corpora "$(CORPORA)" --seeds "$(SEEDS)" \
	--params-file $(PARAMS) $(if $(DRY_RUN),--dry-run) 2>&1)
$(if $(KEY_CHANGES),$(info $(KEY_CHANGES)))
RUN_KEY := $(if $(and $(DRY_RUN),$(KEY_CHANGES)),$(RUN_KEY).dry-run,$(RUN_KEY))
endif
$(TORCH_SPEC) $(RUN_KEY): ;

# Exact versions from constraints.txt (the environment the committed tables were made with; `make
# constraints` refreshes it); pyproject keeps ranges for library users. The package goes in with its `dev`
# (tests, ruff, the book) and `notebooks` (jupyter, papermill, seaborn) extras. The full log: $(VENV)/setup.log.
$(STAMP): pyproject.toml constraints.txt $(TORCH_SPEC)
	@echo "setting up $(VENV) with $(TORCH) from $(TORCH_INDEX) (log: $(VENV)/setup.log)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@( $(PY) -m pip install --upgrade pip && \
	   $(PY) -m pip install --index-url $(TORCH_INDEX) --extra-index-url https://pypi.org/simple "$(TORCH)" && \
	   $(PY) -m pip install -c constraints.txt -e ".[dev,notebooks]" && \
	   $(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (fisher-boundary)" \
	 ) > $(VENV)/setup.log 2>&1 || { tail -n 20 $(VENV)/setup.log; echo "set-up failed: full log in $(VENV)/setup.log"; exit 1; }
	@touch $@

constraints: $(STAMP)
	$(PY) -m pip freeze --exclude-editable | grep -v -i -E '^(torch|nvidia-|triton)' > constraints.txt

# ruff (installed by the set-up, the dev extra) checks fisherlib, the tests, benchmarks, tools and notebooks; its
# settings are pyproject.toml's [tool.ruff]. `ruff check --fix` mends most findings (import order, unused imports).
LINTED := fisherlib tests benchmarks tools notebooks
lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)

test: $(STAMP)
	$(PY) -m pytest -q

test-unit: $(STAMP)
	$(PY) -m pytest -q -m "not integration and not notebooks"

test-integration: $(STAMP)
	$(PY) -m pytest -q -m integration

test-notebooks: $(STAMP)
	$(PY) -m pytest -q -m notebooks

# The layer engine on 30 architectures built from configs (its path, JVPs and first crossings against brute force,
# ~10 s, also in make test), then notebooks 01, 08 and 09 on each as an HF folder (~20 min on 2 cores).
test-architectures: $(STAMP)
	FISHERLIB_ALL_ARCHITECTURES=1 $(PY) -m pytest -q tests/layers/test_full_context.py tests/test_notebooks.py -k "architecture"

# BENCH_ARGS="--vocab 5000" for a quicker look; the default is the issue's V = 50 000 problem (~12 min on 2 cores).
bench: $(STAMP)
	$(PY) benchmarks/bench_boundary.py $(BENCH_ARGS)

# The real tier's LM heads at full size (pythia-1b, Llama-3.2-1B, Qwen3-1.7B), 1-layer trunk: s/position and peak memory per stage.
bench-real: $(STAMP)
	$(PY) benchmarks/bench_real.py $(BENCH_REAL_ARGS)

# layer_boundary against the naive method (full-context forward at every step, doubling then 50 bisections).
bench-layers: $(STAMP)
	$(PY) benchmarks/bench_layers.py $(BENCH_LAYERS_ARGS)

# The closed-form population budget against the bisection baseline (repeated full passes), same prompts, one run.
bench-steering: $(STAMP)
	$(PY) benchmarks/bench_steering.py $(BENCH_STEERING_ARGS)

# `fisherlib measure sweep`, `layers` and `steering` with 1 and 2 torchrun processes (threads split between them), one run.
bench-distributed: $(STAMP)
	$(PY) benchmarks/bench_distributed.py $(BENCH_DISTRIBUTED_ARGS)

# The whole study on one model from an empty cache, notebook by notebook (BENCH_STUDY_ARGS="--arch smollm2 --fixture-corpora").
bench-study: $(STAMP)
	$(PY) benchmarks/bench_study.py $(BENCH_STUDY_ARGS)

# A grid of runs, one `make reproduce` job each, through submitit: EXECUTOR=slurm (PARTITION, GPUS, MEM_GB,
# TIME_MIN) or local. Complete runs are skipped; rerunning resubmits the failed ones. Then `make paper`.
ARCHS ?= $(ARCH)
EXECUTOR ?= slurm
grid: $(STAMP)
	@$(PY) -m fisherlib.run.cli grid --archs $(ARCHS) --executor $(EXECUTOR) \
		$(if $(REVISIONS),--revisions $(REVISIONS)) $(if $(SEEDS),--seeds $(SEEDS)) \
		$(if $(PARTITION),--partition $(PARTITION)) $(if $(GPUS),--gpus-per-job $(GPUS)) \
		$(if $(MEM_GB),--mem-gb $(MEM_GB)) $(if $(TIME_MIN),--time-min $(TIME_MIN)) $(if $(GRID_MAKE_ARGS),--make-args $(GRID_MAKE_ARGS))

# For a session with a GPU (no venv needed: the device image's python3); without CUDA, a CPU dry run that says what it skipped.
gpu-check:
	PYTHONPATH=. $(if $(wildcard $(PY)),$(PY),python3) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

reproduce: $(EXECUTED)
	@$(PY) tools/runs.py publish --run $(RUN_NAME) --stage $(STAGE) --notebooks $(EXECUTED)

# One pattern rule per notebook: an unchanged notebook with unchanged inputs and library is not rerun, and
# `make -j` runs 02 beside 03 and 04-07 side by side once the sweep exists. One line per notebook; the
# rest goes to $(RUN_DIR)/logs/.
$(RUN_DIR)/%.ipynb: notebooks/%.ipynb $(PARAMS) $(STAMP) $(RUN_KEY) $(LIBRARY)
	@$(PY) tools/runs.py notebook $< $@ $(RUNNER_ARGS) --prerequisites $^

$(RUN_DIR)/02_fisher_geometry.ipynb $(RUN_DIR)/03_direction_sweep.ipynb: $(RUN_DIR)/01_sample_positions.ipynb
# 08, 09 and 11 read notebook 01's sample only.
$(RUN_DIR)/08_layer_pullback.ipynb $(RUN_DIR)/09_interpolation_plateaus.ipynb $(RUN_DIR)/11_steering_budget.ipynb: $(RUN_DIR)/01_sample_positions.ipynb
ifneq ($(NPROC),1)
# The sharded steps fill the cache first: notebook 01 reads the sample, 03, 08 and 11 the sweep, the layer
# study and the steering budgets.
$(RUN_DIR)/01_sample_positions.ipynb: $(RUN_DIR)/.sample-measured
$(RUN_DIR)/.sample-measured: $(PARAMS) $(STAMP) $(RUN_KEY) $(LIBRARY)
	@$(TORCHRUN) measure sample $(PARAM_ARGS) $(MEASURED)
	@touch $@
$(RUN_DIR)/03_direction_sweep.ipynb $(RUN_DIR)/08_layer_pullback.ipynb $(RUN_DIR)/11_steering_budget.ipynb: $(RUN_DIR)/.measured
$(RUN_DIR)/.measured: $(RUN_DIR)/01_sample_positions.ipynb $(PARAMS) $(STAMP) $(RUN_KEY) $(LIBRARY)
	@$(TORCHRUN) measure sweep layers steering $(PARAM_ARGS) $(MEASURED)
	@touch $@
endif
$(RUN_DIR)/04_closed_form_exactness.ipynb $(RUN_DIR)/05_direction_classes.ipynb \
$(RUN_DIR)/06_isotonic_calibration.ipynb $(RUN_DIR)/07_entropy_stratification.ipynb: $(RUN_DIR)/03_direction_sweep.ipynb

# Notebook 10 reruns every time (REVISIONS may have changed); each revision's measurements are cached, so only new ones cost.
dynamics: $(RUN_DIR)/01_sample_positions.ipynb
	@rm -f $(RUN_DIR)/10_training_dynamics.ipynb
ifneq ($(NPROC),1)
	@$(TORCHRUN) measure dynamics $(PARAM_ARGS) $(MEASURED)
endif
	@$(MAKE) --no-print-directory $(RUN_DIR)/10_training_dynamics.ipynb
	@$(PY) tools/runs.py publish --run $(RUN_NAME) --stage $(STAGE) --notebooks $(RUN_DIR)/01_sample_positions.ipynb $(RUN_DIR)/10_training_dynamics.ipynb

tiny-model: $(STAMP)
	$(PY) -m fisherlib.run.cli tiny --train --output models/tiny

paper: $(STAMP)
	$(PY) -m fisherlib.run.cli paper

# The README's results block from results/$(RUN_NAME)/ (the story, then notebooks 06, 08, 09 and 10's findings).
readme: $(STAMP)
	$(PY) -m fisherlib.run.cli readme --results results/$(RUN_NAME)

# Did the rerun reproduce the run? Its tables, claims' verdicts and published notebooks' text against the
# committed copy (git HEAD), or AGAINST=<folder>, with the tolerances of fisherlib/report/verify.py; exits 1 if not.
verify: $(STAMP)
	@$(PY) -m fisherlib.run.cli verify --results results/$(RUN_NAME) $(if $(AGAINST),--against "$(AGAINST)")

# The site of every complete run, from the stored outputs (nothing executes): build/book/html/index.html.
book: $(STAMP)
	@$(PY) -m fisherlib.run.cli book

clean:
	rm -rf runs .pytest_cache
