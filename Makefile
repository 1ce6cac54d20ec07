# Every target installs what it needs on first use (a virtualenv in .venv, CPU torch pinned in pyproject.toml).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

SUITE ?= default
METHOD ?=
REWARD ?=
SEEDS ?=
BUDGET ?=
# cells side by side in worker processes, one torch thread each
WORKERS ?= $(shell nproc 2>/dev/null || echo 1)
WORLD ?= digits
ARGS ?=

# Nothing may come from a model hub at run time; everything this project loads ships in a package.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install lint test test-all test-slow models bench tune publish leaderboard docs throughput cpu-throughput clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@echo "installing the project into $(VENV) (first use, or pyproject.toml changed): about 2 minutes and 2.5 GB"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@echo "installed: $$($(PY) -m pip list --format freeze 2>/dev/null | wc -l) packages"
	rm -f $(VENV)/.installed-* && touch $@

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/basedpyright --project pyproject.toml

# The fast tests (CPU, a few minutes); test-all adds the slow ones (spawned processes, kill trials, the smoke suite).
test: $(STAMP)
	$(PY) -m pytest -q -rs $(ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -rs -m slow $(ARGS)

test-all: test test-slow

models: $(STAMP)
	$(PY) -m bench models --world $(WORLD)

bench: $(STAMP)
	$(PY) -m bench run --suite $(SUITE) \
		$(if $(METHOD),--method $(METHOD)) $(if $(REWARD),--reward '$(REWARD)') \
		$(if $(SEEDS),--seeds $(SEEDS)) $(if $(BUDGET),--budget $(BUDGET)) \
		$(if $(WORKERS),--workers $(WORKERS)) $(ARGS)

# Tune every trained method of a suite with the same budget per cell (bench/tune.py), resumable; writes
# tuned.json beside the suite's local store, which its METHOD/tuned@MODEL entries (and SUITE=scenes-tuned) run.
tune: $(STAMP)
	$(PY) -m bench tune --suite $(SUITE) \
		$(if $(METHOD),--method $(METHOD)) $(if $(REWARD),--reward '$(REWARD)') \
		$(if $(WORKERS),--workers $(WORKERS)) $(ARGS)

# Copy a suite's local results (artifacts/results/<suite>/, what make bench and make tune wrote) into its committed
# ones, results/<suite>/, and rewrite their tables; refused from a tree whose code differs from its commit.
publish: $(STAMP)
	$(PY) -m bench publish --suite $(SUITE)

leaderboard: $(STAMP)
	$(PY) -m bench leaderboard --suite $(SUITE) $(ARGS)

# Rewrite the tables README.md and docs/results.md quote from results/<suite>/ (bench/docs.py).
docs: $(STAMP)
	$(PY) -m bench.docs

# Training-step images/s, peak memory and MFU on real-size random-weight SD 1.5, LCM and SD3 (a GPU benchmark).
throughput: $(STAMP)
	$(PY) -m bench throughput $(if $(METHOD),--method $(METHOD)) $(ARGS)

# Training steps on one CPU thread: every digits and scenes leaderboard entry's NFE/s and GFLOP/s against matmul; with
# TRL_PYTHON (the python of a virtualenv holding trl 0.23.1), DDPO against trl's DDPOTrainer on a tiny SD pipeline,
# speed and memory (bench/throughput/cpu.py).
cpu-throughput: $(STAMP)
	$(PY) -m bench cpu-throughput $(if $(TRL_PYTHON),--trl-python $(TRL_PYTHON)) $(ARGS)

clean:
	rm -rf results/*/*.runs .pytest_cache
