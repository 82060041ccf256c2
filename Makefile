# `make run`: set-up + the full pipeline on the default dataset. `make test`: set-up + tests.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false

.PHONY: setup run test test-fast repro ui clean

# torch first, with the venv's own pip: it takes the CPU wheel on disk (a newer pip, uv or
# poetry would download a multi-GB CUDA build). Do not upgrade pip in the venv.
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

setup: $(BIN)/.installed

run: setup
	$(BIN)/mlpipe run

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

repro: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

ui: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --port 5000

clean:
	rm -rf data/prepared data/augmented models reports mlflow.db mlartifacts .mlpipe
