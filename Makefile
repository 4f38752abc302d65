# The single entry point. `make run` and `make test` each do all the set-up they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export OPENGROK_HOME ?= $(CURDIR)/.opengrok
export DAGSTER_HOME ?= $(OPENGROK_HOME)/dagster_home
PYTEST_ARGS ?=

.PHONY: setup run test test-fast dev bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip>=25"
	# torch first and pinned: the CPU wheel; a loose requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)
	$(BIN)/opengrok provision

run: setup
	$(BIN)/opengrok run

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not integration" $(PYTEST_ARGS)

dev: setup
	$(BIN)/opengrok topics sync
	$(BIN)/dagster dev -w workspace.yaml

bench: setup
	$(BIN)/python -m bench.collection_throughput

clean:
	rm -rf $(VENV) .opengrok
