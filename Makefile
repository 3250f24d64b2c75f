# Two entry points, both idempotent: `make chat` installs what running needs, `make test` adds
# the dev extras (pytest, torch, transformers, ...). One stamp per set of extras: each is
# installed once, and again only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $(RUN_STAMP)

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(DEV_STAMP)

.PHONY: setup chat test
setup: $(RUN_STAMP)

chat: $(RUN_STAMP)
	$(BIN)/lantern chat

test: $(DEV_STAMP)
	$(BIN)/python -m pytest -q --durations=15 tests
