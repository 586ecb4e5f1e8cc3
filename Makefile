# inatcomp: `make demo` runs the main job, `make test` runs lint and the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= runs/demo
PYTEST_ARGS ?=
BASELINE_ARGS ?=

.PHONY: install test test-oldest lint demo bench ablation pretrain clean baseline-inat2017 baseline-inat2018 baseline-inat2021

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

# The oldest versions setup.cfg allows (torch, torchvision, timm at their lower bounds; constraints-oldest.txt),
# in a second venv: the tests of what depends on them most (models, heads, training, prediction, export).
OLDEST_VENV := .venv-oldest
OLDEST_TESTS ?= tests/test_heads.py tests/test_models.py tests/test_train.py tests/test_predict.py \
	tests/test_damaged.py tests/test_deploy.py tests/test_pretrained.py

test-oldest: $(OLDEST_VENV)/.installed-stamp
	$(OLDEST_VENV)/bin/pytest -p no:cacheprovider $(PYTEST_ARGS) $(OLDEST_TESTS)

$(OLDEST_VENV)/.installed-stamp: setup.cfg pyproject.toml constraints-oldest.txt
	test -x $(OLDEST_VENV)/bin/python || $(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/pip install --disable-pip-version-check -q -c constraints-oldest.txt -e '.[dev]'
	touch $@

# make's start, before the install: the demo's summary gives the time of a first run with its install.
DEMO_STARTED := $(shell date +%s)

demo: install
	$(BIN)/inatcomp demo $(DEMO_DIR) --readme README.md --started-at $(DEMO_STARTED)

bench: install
	$(BIN)/python -m benchmarks.run_all --write BENCHMARKS.md

ablation: install
	$(BIN)/python -m benchmarks.ablation --write ABLATION.md
	$(BIN)/python -m benchmarks.longtail --write ABLATION.md --write README.md

# Rebuild the shipped synthetic-world backbone (inatcomp/models/weights/): about 11 minutes on 2 CPU cores.
pretrain: install
	$(BIN)/inatcomp pretrain --out runs/pretrain --install --readme README.md

# The iNat baselines on a real downloaded release (a GPU machine): make baseline-inat2018 DATA=/path/to/inat2018
baseline-inat2017 baseline-inat2018 baseline-inat2021: baseline-inat%: install
	@test -n "$(DATA)" || { echo "make $@: set DATA to the downloaded iNat$* release folder, e.g. make $@ DATA=/data/inat$*" >&2; exit 2; }
	@test -d "$(DATA)" || { echo "make $@: DATA=$(DATA) is not a folder (expected the iNat$* release)" >&2; exit 2; }
	$(BIN)/python kernels/baseline.py --data "$(DATA)" --year $* --out runs/baseline-inat$* $(BASELINE_ARGS)

clean:
	rm -rf $(VENV) $(OLDEST_VENV) runs *.egg-info .pytest_cache .ruff_cache
