# The two set-up commands of the README are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# torch first and pinned, the CPU build unless an NVIDIA GPU is seen (scripts/install-torch.sh;
# TORCH_VARIANT=cpu|cuda overrides).
TORCH_VERSION ?= 2.13.0
# Arguments of `pqm serve`, e.g. make run ARGS="--host 0.0.0.0 --port 9000".
ARGS ?=

.PHONY: run test lint typecheck unit bench venv system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

venv: $(BIN)/python
	scripts/install-torch.sh $(BIN)/pip $(TORCH_VERSION)

## Install the service (regular install) and run it on its embedded defaults.
run: venv
	$(BIN)/pip install --quiet .
	$(BIN)/pqm serve $(ARGS)

## Install system packages and test dependencies, then lint, type-check and test.
test: system-deps venv
	$(BIN)/pip install --quiet -e '.[test]'
	$(MAKE) lint typecheck unit

system-deps:
	scripts/install-system-deps.sh

lint:
	$(BIN)/ruff check app adapters_store migrations bench tests
	$(BIN)/ruff format --check app adapters_store migrations bench tests

typecheck:
	$(BIN)/mypy app adapters_store bench tests

unit:
	$(BIN)/python -m pytest -p no:cacheprovider -rs $(PYTEST_ARGS)

bench: venv
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench.transcribe

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
