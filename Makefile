# Two entry points, both idempotent: `make chat` and `make test` build .venv once.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

.PHONY: setup chat test
setup: $(STAMP)

chat: $(STAMP)
	$(BIN)/lantern chat

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15 tests
