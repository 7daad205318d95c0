# Set-up and checks. `make demo` and `make test` work on a fresh machine with
# only Python 3.11 and make: they create .venv and install what they need.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# One BLAS thread: on small shared machines OpenBLAS's default threading can
# make an SVD 30x slower. Respect a value the caller set.
export OPENBLAS_NUM_THREADS ?= 1
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1

.PHONY: demo test lint typecheck bench docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.experiments: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[experiments]"
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[experiments,dev,docs]"
	touch $@

demo: $(VENV)/.experiments
	$(BIN)/python -m experiments.demo

# ruff check over all the Python; ruff format (2-space, see pyproject.toml)
# and mypy over the experiments, benchmarks and tools too.
LINT_PATHS := optax_egd experiments benchmarks tools
lint: $(VENV)/.dev
	$(BIN)/ruff check $(LINT_PATHS) tests ci docs/*.py
	$(BIN)/ruff format --check experiments benchmarks tools
	$(BIN)/mypy $(LINT_PATHS)

# `make test`: lint, docs, and every test but the `full` ones, on 2 pytest-xdist
# workers (a test file per worker at a time: module fixtures run once).
# `make test FILE=tests/test_polar.py` (or a test id, or several): only those,
# in this process, without lint and docs. `make test-full`: the `full` ones
# (long harness tails, repeated hang checks, long runs); CI runs both.
FILE ?=
PYTEST_WORKERS ?= $(if $(FILE),0,2)
PYTEST_ARGS ?=
PYTEST_XDIST = $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile)
ifeq ($(FILE),)
test: lint docs
endif
test: $(VENV)/.dev
	$(BIN)/python -m pytest -m "not full" $(PYTEST_XDIST) $(PYTEST_ARGS) $(FILE)

.PHONY: test-full
test-full: $(VENV)/.dev
	$(BIN)/python -m pytest -m full $(PYTEST_XDIST) $(PYTEST_ARGS) $(FILE)

# The HTML site in docs/_build/html. -W: a warning (broken link, bad docstring,
# missing page) fails the build; -E: re-read every page, so docstring changes
# are picked up. The notebook is rendered from its stored outputs, not run.
docs: $(VENV)/.dev
	$(BIN)/sphinx-build -W --keep-going -E -q -b html docs docs/_build/html
	@echo "docs: docs/_build/html/index.html"

# `make bench` (speed and accuracy) writes into a new folder runs/bench/<date>-<time>
# (or BENCH_OUT); `make bench-refresh` rewrites the committed references in
# benchmarks/results. Time to grok is an experiment: `python -m experiments.time_to_grok`
# (reference: --out experiments/results; see experiments/README.md).
BENCH_STAMP := $(shell date +%Y%m%d-%H%M%S)
BENCH_OUT ?= runs/bench/$(BENCH_STAMP)
.PHONY: bench-refresh

bench: $(VENV)/.experiments
	$(BIN)/python -m benchmarks.polar --quick --out $(BENCH_OUT)
	$(BIN)/python -m benchmarks.step --out $(BENCH_OUT)
	$(BIN)/python -m benchmarks.layer_parallel --quick --out $(BENCH_OUT)
	$(BIN)/python -m benchmarks.fsdp --out $(BENCH_OUT)
	$(BIN)/python -m benchmarks.cost_model --out $(BENCH_OUT)

bench-refresh:
	$(MAKE) bench BENCH_OUT=benchmarks/results

# The lowest versions pyproject.toml declares (pinned in ci/floor-constraints.txt)
# on the lowest Python it declares, in their own venv: the library tests and
# a training run. A new venv whenever the floors change.
.PHONY: test-floor
FLOOR_PYTHON ?= python3.11
FLOOR_VENV := .venv-floor
FLOOR_TESTS := optax_egd tests/test_polar.py tests/test_transform.py \
  tests/test_baselines.py tests/test_spectrum.py tests/test_sharding.py \
  tests/test_compat.py tests/test_floors.py tests/test_export.py \
  tests/test_experiments.py::test_resume_equals_uninterrupted

$(FLOOR_VENV)/.installed: pyproject.toml ci/floor-constraints.txt
	rm -rf $(FLOOR_VENV)
	$(FLOOR_PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pip install -q --upgrade pip
	$(FLOOR_VENV)/bin/python -m pip install -q -c ci/floor-constraints.txt \
	  -e ".[experiments]" "pytest>=8" hypothesis
	touch $@

test-floor: $(FLOOR_VENV)/.installed
	OPTAX_EGD_FLOOR=1 $(FLOOR_VENV)/bin/python -m pytest -p no:cacheprovider \
	  $(FLOOR_TESTS)
	$(FLOOR_VENV)/bin/python -m experiments.demo

clean:
	rm -rf $(VENV) $(FLOOR_VENV) build dist docs/_build *.egg-info .pytest_cache .mypy_cache .ruff_cache
