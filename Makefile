# Every target bootstraps .venv from requirements.txt + constraints.txt, so a fresh clone needs
# only Python 3.11 and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?= dataset
OUTPUT ?= output
PORT ?= 4200

# Prefect must never phone home from these machines.
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' \
		-v data='$(DATA)' -v output='$(OUTPUT)' -v port='$(PORT)' \
		'{gsub(/\$$\(DATA\)/, data, $$2); gsub(/\$$\(OUTPUT\)/, output, $$2); \
		gsub(/\$$\(PORT\)/, port, $$2); printf "  %-11s %s\n", $$1, $$2}'

$(STAMP): requirements.txt constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt -c constraints.txt
	touch $(STAMP)

install: $(STAMP) ## create .venv and install pinned dependencies

run: $(STAMP) ## train on DATA=$(DATA) ("dataset": data/sales.csv + accepted landed files), write OUTPUT=$(OUTPUT)/, print a summary
	$(BIN)/python -m flows.train --data $(DATA) --output $(OUTPUT)

land: $(STAMP) ## move FILE=... into data/landing/ (or LANDING=s3://bucket/prefix), announce it and wait for the check's verdict, the training and the gate (NO_WAIT=1: return once landed)
	@test -n "$(FILE)" || { echo "usage: make land FILE=path/to/file.csv" >&2; exit 2; }
	$(BIN)/python -m flows.land $(FILE) $(if $(LANDING),--landing $(LANDING)) $(if $(NO_WAIT),--no-wait)

dataset: $(STAMP) ## list the dataset (data/sales.csv + accepted landed files) and its fingerprint
	$(BIN)/python -m flows.dataset

serve: $(STAMP) ## local Prefect server (127.0.0.1:$(PORT), PORT=...) + pool + deployments + worker + landing watcher (LANDING=s3://bucket/prefix: a sensor lists it)
	$(BIN)/python -m scripts.local_prefect start --port $(PORT) $(if $(LANDING),--landing $(LANDING))

stop: $(STAMP) ## stop the watcher, the worker and the server started by serve, and the local server `make run` keeps warm
	$(BIN)/python -m scripts.local_prefect stop

bench: $(STAMP) ## measure floors, peers, the steps, scoring and the flow on 1M, 10M, 100M rows (BENCHMARKS.md), then the import time, the 200-row run (first, cold, warm) and the whole CLI process against the polars script (benchmarks/startup.py), a landed file's way to published on the stack (benchmarks/landing.py), then the publish of 10M predictions and 10M rows on the local S3 server, then the digits each estimate shares with NIST's certified values (StRD)
	$(BIN)/python -m pip install --quiet -r benchmarks/requirements.txt -c constraints.txt
	$(BIN)/python -m benchmarks.run
	$(BIN)/python -m benchmarks.startup
	$(BIN)/python -m benchmarks.landing
	$(BIN)/python -m benchmarks.delta_publish --rows 10000000
	$(BIN)/python -m benchmarks.object_store --rows 10000000
	$(BIN)/python -m benchmarks.strd

lint: $(STAMP) ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP) ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: $(STAMP) lint ## lint, then the whole test suite (about 20 minutes on 2 cores)
	$(BIN)/python -m pytest

test-quick: $(STAMP) lint ## lint, then the unit tests: no Prefect server, no S3 server (a few minutes)
	$(BIN)/python -m pytest tests/unit

vacuum: $(STAMP) ## remove the rows of runs that died mid-commit from $(OUTPUT)/, delete files no version of the last SALES_MODEL_VACUUM_HOURS (24) h needs (HOURS=N)
	$(BIN)/python -m flows.outputs vacuum --output $(OUTPUT) $(if $(HOURS),--hours $(HOURS))

migrate: $(STAMP) ## convert $(OUTPUT)/ of an earlier release (Parquet folders + manifests) to Delta tables
	$(BIN)/python -m flows.outputs migrate --output $(OUTPUT)

clean-cache: ## remove the pass-1 cache under $(OUTPUT)/ (the next run parses every file again)
	rm -rf $(OUTPUT)/.cache

clean: ## remove outputs and caches (keeps .venv)
	rm -rf $(OUTPUT) .pytest_cache .ruff_cache data/ledger

.PHONY: help install run land dataset serve stop bench lint format test test-quick vacuum migrate clean-cache clean
