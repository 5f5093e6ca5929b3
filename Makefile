# make train | make test | make bench | make lint — each sets up .venv first (idempotent)
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHON VENV

# extra Hydra overrides for `make train`, e.g. make train ARGS="trainer.max_epochs=5"
ARGS ?=
# pytest arguments for `make test`, e.g. make test PYTEST_ARGS="-m 'not slow'"
PYTEST_ARGS ?=

.PHONY: setup train test test-fast bench realdata lint format clean

setup:
	@bash scripts/setup_env.sh

train: setup
	@set -o pipefail; $(VENV)/bin/pointseg-train $(ARGS) | tee .train.log
	@best=$$(sed -n 's/^best_ckpt: //p' .train.log | tail -n 1); rm -f .train.log; \
	  test -n "$$best" || { echo "no best checkpoint was written"; exit 1; }; \
	  $(VENV)/bin/pointseg-eval ckpt_path="$$best"

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# make bench                 full suite (1 M / 10 M points, 50 M-point scan, up to 1 M voxels)
# make bench BENCH_ARGS=--quick   a few minutes; BENCH_ARGS="--only voxelize,scaling"
BENCH_ARGS ?=
bench: setup
	$(PY) scripts/bench.py $(BENCH_ARGS)

# trains and scores pointseg on ../shared/data/real next to two classical baselines and writes
# docs/real_data.md (CPU, about an hour on 2 cores); REALDATA_ARGS="--only ahn3,ign"
REALDATA_ARGS ?=
realdata: setup
	$(PY) scripts/real_data.py $(REALDATA_ARGS)

lint: setup
	$(VENV)/bin/ruff check pointseg tests scripts
	$(VENV)/bin/ruff format --check pointseg tests scripts

format: setup
	$(VENV)/bin/ruff format pointseg tests scripts
	$(VENV)/bin/ruff check --fix pointseg tests scripts

clean:
	rm -rf logs .pytest_cache
