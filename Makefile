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

.PHONY: demo test lint typecheck bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.experiments: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[experiments]"
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[experiments,dev]"
	touch $@

demo: $(VENV)/.experiments
	$(BIN)/python -m experiments.demo

lint: $(VENV)/.dev
	$(BIN)/ruff check optax_egd
	$(BIN)/mypy optax_egd

test: lint
	$(BIN)/python -m pytest

# `make bench` writes into a new folder runs/bench/<date>-<time> (or BENCH_OUT);
# `make bench-refresh` rewrites the committed references in benchmarks/results.
BENCH_STAMP := $(shell date +%Y%m%d-%H%M%S)
BENCH_OUT ?= runs/bench/$(BENCH_STAMP)
.PHONY: bench-refresh

bench: $(VENV)/.experiments
	$(BIN)/python -m benchmarks.polar --quick --out $(BENCH_OUT)
	$(BIN)/python -m benchmarks.step --out $(BENCH_OUT)
	$(BIN)/python -m benchmarks.layer_parallel --quick --out $(BENCH_OUT)
	$(BIN)/python -m benchmarks.grok --out $(BENCH_OUT)

bench-refresh:
	$(MAKE) bench BENCH_OUT=benchmarks/results

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
