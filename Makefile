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

lint: $(VENV)/.dev
	$(BIN)/ruff check optax_egd
	$(BIN)/mypy optax_egd

test: lint docs
	$(BIN)/python -m pytest

# The HTML site in docs/_build/html. -W: a warning (broken link, bad docstring,
# missing page) fails the build; -E: re-read every page, so docstring changes
# are picked up. The notebook is rendered from its stored outputs, not run.
docs: $(VENV)/.dev
	$(BIN)/sphinx-build -W --keep-going -E -q -b html docs docs/_build/html
	@echo "docs: docs/_build/html/index.html"

bench: $(VENV)/.experiments
	$(BIN)/python -m benchmarks.polar --quick
	$(BIN)/python -m benchmarks.step
	$(BIN)/python -m benchmarks.grok

clean:
	rm -rf $(VENV) build dist docs/_build *.egg-info .pytest_cache .mypy_cache .ruff_cache
