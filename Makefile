# Two entry points: `make demo` and `make test`. Both create .venv when missing and (re)install
# only when pyproject.toml or constraints.txt changed since the last install.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.mlr-bench-installed
REQS_HASH := $(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)

export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline
export OMP_NUM_THREADS ?= 1

.PHONY: install demo test lint format clean

install:
	@if [ ! -x "$(PY)" ]; then python3 -m venv $(VENV); fi
	@if [ "$$(cat $(STAMP) 2>/dev/null)" != "$(REQS_HASH)" ]; then \
		echo "installing mlr-bench into $(VENV) (requirements changed or first install)"; \
		$(PIP) install --quiet -c constraints.txt -e '.[dev]' && \
		echo "$(REQS_HASH)" > $(STAMP); \
	else echo "$(VENV) is up to date"; fi

# Every registered method on the synthetic world with its world recipe
# (configs/experiment/<method>_world.yaml), 2 cells at once (one thread each), 1 seed, each
# method trained for 2% of its reference optimizer steps (the full world benchmark: 5%, 3 seeds:
# `mlr-bench benchmark --methods all --data world --seeds 1,2,3`; docs/budgets.md). Writes
# runs/demo/{leaderboard.md,results.csv,results.json,plots/}.
# Resumable: a re-run skips finished cells (delete runs/demo to start over).
DEMO_BUDGET ?= 0.02
demo: install
	$(VENV)/bin/mlr-bench benchmark --methods all --data world --seeds 1 --workers 2 \
		--out runs/demo -- --trainer.budget_fraction $(DEMO_BUDGET)

# Tests run in TEST_WORKERS processes (pytest-xdist; most tests use one core, so 2 workers
# keep a 2-core machine busy). TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2
test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

clean:
	rm -rf runs .cache .pytest_cache .ruff_cache
