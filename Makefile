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

.PHONY: demo demo-check loop stop test install install-test browser bench clean

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
# BentoML service and the review dashboard.  `make stop` ends them.  Safe to run again: the data
# is simulated once (data/history.parquet), a batch already ingested is accepted as such, running
# services are left running, and bootstrapping and packaging are no-ops when already done.
PREFECT_URL := http://127.0.0.1:4200
SIMULATED := data/history.parquet

$(SIMULATED): | $(VENV)/.installed
	$(BIN)/bartops simulate

demo: install $(SIMULATED)
	$(BIN)/bartops up prefect
	PREFECT_API_URL=$(PREFECT_URL)/api $(BIN)/python -m flows.retrain --auto-approve
	@# The gate decides (and the flow packages what it promotes).  Only if nothing is in production
	@# afterwards (the first round, when the logs cannot vouch for the model) does an operator start
	@# the loop: a forced promotion of the newest version, recorded as such; otherwise a no-op.
	$(BIN)/bartops registry bootstrap
	@# production's Bento: built once per version and sources, a no-op when the flow already built it
	$(BIN)/bartops package
	PREFECT_API_URL=$(PREFECT_URL)/api $(BIN)/bartops up deployments service dashboard
	@echo
	@echo "Prefect UI:   $(PREFECT_URL)  (runs, sub-flows, artifacts)"
	@echo "Service:      http://127.0.0.1:3000  (BentoML; production policy from registry/)"
	@echo "Dashboard:    http://127.0.0.1:8050  (review candidates, approve or reject)"
	@echo "Outputs:      data/ (raw), build/ (features, model, reports), registry/ (versions), serving-logs/"
	@echo "Try:          curl -s -X POST http://127.0.0.1:3000/home -H 'content-type: application/json' -d '{\"user_id\": 5, \"platform\": \"ios\", \"region\": \"SE\"}'"
	@echo "Check:        $(BIN)/bartops check   (each entry point answers with the production version)"
	@echo "Next round:   PREFECT_API_URL=$(PREFECT_URL)/api $(BIN)/prefect deployment run 'retrain/nightly' --watch"
	@echo "Stop all:     make stop"

# The living loop against the stack `make demo` started: simulated listeners request pages over HTTP,
# the ingest and retrain deployments learn and gate, the service swaps; one row per round in
# build/loop/rounds.csv (dashboard: /loop; `dvc plots show`).  `make loop ROUNDS=2 PAGE_VIEWS=1000`
ROUNDS ?= 5
PAGE_VIEWS ?= 4000
loop: install
	@$(BIN)/bartops check >/dev/null || { echo "the stack is not up: run 'make demo' first"; exit 1; }
	PREFECT_API_URL=$(PREFECT_URL)/api $(BIN)/python -m flows.loop --rounds $(ROUNDS) --page-views $(PAGE_VIEWS)
	@echo "Rounds:       build/loop/rounds.csv  (dashboard http://127.0.0.1:8050/loop, dvc plots show)"

stop:
	-$(BIN)/bartops down

test: install-test browser
	$(BIN)/python -m pytest -q tests
	$(MAKE) --no-print-directory demo-check

# The main job as CI runs it: `make demo`, then `bartops check` (the Prefect deployment, the
# service's /home and the dashboard answer with the registry's production version), then
# `make stop` whatever happened; the exit code is the first failure's.
demo-check:
	@status=0; { $(MAKE) --no-print-directory demo && $(BIN)/bartops check; } || status=$$?; \
	  $(MAKE) --no-print-directory stop; exit $$status

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[bench]'
	touch $(VENV)/.installed $@

# Peer benchmarks (Vowpal Wabbit, a reference OPE), pipeline scaling and the quick figures:
# JSON per benchmark and a Markdown summary in bench/results/ (`python -m bench.run --suite all` for every one)
bench: $(VENV)/.installed-bench
	$(BIN)/python -m bench.run

clean:
	rm -rf build .pytest_cache
