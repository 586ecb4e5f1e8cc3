# inatcomp: `make demo` runs the main job, `make test` runs lint and the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= runs/demo
PYTEST_ARGS ?=

.PHONY: install test lint demo bench clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

lint: install
	$(BIN)/ruff check inatcomp tests benchmarks kernels
	$(BIN)/ruff format --check inatcomp tests benchmarks kernels

test: lint
	$(BIN)/pytest -n 2 $(PYTEST_ARGS)

demo: install
	$(BIN)/inatcomp demo $(DEMO_DIR)

bench: install
	$(BIN)/python -m benchmarks.run_all --write BENCHMARKS.md

clean:
	rm -rf $(VENV) runs *.egg-info .pytest_cache .ruff_cache
