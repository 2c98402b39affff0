# Everything a new machine needs comes from this file, pyproject.toml and constraints.txt.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export ALGOR_HOME ?= $(CURDIR)/.algor
export DAGSTER_HOME ?= $(ALGOR_HOME)/dagster_home

.PHONY: install demo test ui sample bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	$(PY) -m resources.dbt  # parse the dbt project once, so the code location loads fast
	mkdir -p $(DAGSTER_HOME)
	touch $@

## Run one campaign end to end on the embedded default (SQLite + chDB + provider sandbox).
demo: install
	$(PY) demo/run.py

## The whole test suite (what CI runs).
test: install
	$(PY) -m pytest

## Open the demo's runs in the Dagster UI (http://127.0.0.1:3000).
ui: install
	mkdir -p $(DAGSTER_HOME) && cp -n dagster.yaml $(DAGSTER_HOME)/dagster.yaml || true
	$(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

## Regenerate the shipped sample CSV.
sample: install
	$(PY) -m orchestrator_assets.imports.sample_contacts

clean:
	rm -rf $(ALGOR_HOME) dbt_project/target dbt_project/logs
