# `make run`: set-up + the full pipeline on the default dataset. `make test`: set-up + tests.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false

.PHONY: setup run test test-fast bench-smoke lint repro ui clean browser serve stop

# torch first, with the venv's own pip: it takes the CPU wheel on disk (a newer pip, uv or
# poetry would download a multi-GB CUDA build). Do not upgrade pip in the venv.
# Keep pip's byte-compilation: these machines set PYTHONDONTWRITEBYTECODE=1, so with --no-compile every process
# compiles torch/MLflow/Prefect from source (set-up 226 -> 106 s, but make test 7:30 -> 14:54; BENCHMARKS.md).
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

setup: $(BIN)/.installed

run: setup
	$(BIN)/mlpipe run

# Two pytest workers (pytest-xdist): most of a test's time is process start-up and imports on one
# core. A file runs on one worker, so a module fixture starts once; files start in the order of
# tests/conftest.py (slowest first), not xdist's default (most tests first).
TEST_WORKERS ?= 2

# The house rules (import-linter contracts in pyproject.toml: no cycles, components/ never imports
# prefect or flows/, only tracking.py and registry.py import mlflow) and ruff's lint and format.
# The Kubernetes manifests against the API schemas of K8S_VERSION, strict (an unknown field fails), with
# kubernetes-validate (PyPI; its schemas ship in the package, no download at run time).
K8S_VERSION ?= 1.33.0
lint: setup
	$(BIN)/lint-imports
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/kubernetes-validate --strict --quiet -k $(K8S_VERSION) infra/k8s/*.yaml

test: setup browser lint
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15 -m "not bench"

test-fast: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not slow and not bench"

# Every benchmark module's --smoke run (tests/code/test_benchmarks.py, marked bench): the scripts still run and
# print their figures. Kept out of `make test` (about 4.5 min of two runs at a time on 2 cores); CI runs both.
bench-smoke: setup
	$(BIN)/python -m pytest -q -m bench tests/code/test_benchmarks.py

repro: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

ui: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --port 5000

# Debian's headless Chromium for the MLflow UI test; installed once (CI runs as root). If it
# cannot be installed, that one test skips and says why.
browser:
	@test -x /usr/bin/chromium || { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || echo "chromium could not be installed: the browser test will skip"

# MLflow server (SQLite, WAL) on :5000, Prefect server on :4200, the scheduled deployment's serve
# process, the model server following @champion on :5001 (mlpipe serve-model); pid files and logs in
# .mlpipe/servers/. Then: export MLFLOW_TRACKING_URI / PREFECT_API_URL.
serve: setup
	$(BIN)/mlpipe serve

stop:
	$(BIN)/mlpipe stop

clean:
	rm -rf data/prepared data/augmented models reports mlflow.db* mlartifacts .mlpipe
