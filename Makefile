# bartops: `make demo` sets up and runs the main job; `make test` sets up and runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

# quiet, offline-safe defaults (no telemetry anywhere)
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export BENTOML_DO_NOT_TRACK := True
export GX_ANALYTICS_ENABLED := False
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 180

.PHONY: demo stop test install install-test browser bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test,dask,bench]'
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# Debian's chromium for the browser tests (Playwright drives the system binary)
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; }

# The whole main job on the embedded default: data, a local Prefect server, one retraining round
# (validate → features → train → evaluate and gate → package), then the deployments, the
# BentoML service and the review dashboard.  `make stop` ends them.
PREFECT_URL := http://127.0.0.1:4200
demo: install
	$(BIN)/bartops simulate
	$(BIN)/bartops up prefect
	PREFECT_API_URL=$(PREFECT_URL)/api $(BIN)/python -m flows.retrain --auto-approve
	@# first round only: nothing in production yet, so an operator starts the loop (recorded as forced)
	$(BIN)/bartops registry bootstrap
	$(BIN)/bartops package
	PREFECT_API_URL=$(PREFECT_URL)/api $(BIN)/bartops up deployments service dashboard
	@echo
	@echo "Prefect UI:   $(PREFECT_URL)  (runs, sub-flows, artifacts)"
	@echo "Service:      http://127.0.0.1:3000  (BentoML; production policy from registry/)"
	@echo "Dashboard:    http://127.0.0.1:8050  (review candidates, approve or reject)"
	@echo "Outputs:      data/ (raw), build/ (features, model, reports), registry/ (versions), serving-logs/"
	@echo "Try:          curl -s -X POST http://127.0.0.1:3000/home -H 'content-type: application/json' -d '{\"user_id\": 5, \"platform\": \"ios\", \"region\": \"SE\"}'"
	@echo "Next round:   PREFECT_API_URL=$(PREFECT_URL)/api $(BIN)/prefect deployment run 'retrain/nightly' --watch"
	@echo "Stop all:     make stop"

stop:
	-$(BIN)/bartops down

test: install-test browser
	$(BIN)/python -m pytest -q tests

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[bench]'
	touch $(VENV)/.installed $@

# Peer benchmarks (Vowpal Wabbit, a reference OPE), pipeline scaling and the quick figures:
# JSON per benchmark and a Markdown summary in bench/results/ (`python -m bench.run --suite all` for every one)
bench: $(VENV)/.installed-bench
	$(BIN)/python -m bench.run

clean:
	rm -rf build .pytest_cache
