# Everything a new machine needs comes from this file, pyproject.toml and constraints.txt.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
UI_PORT ?= 3000
# The demo's home; the code reads ALGOR_HOME itself (resources/settings.py), same default.
ALGOR_HOME ?= $(CURDIR)/.algor

.PHONY: install browser demo test ui sample clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	$(PY) -m resources.dbt  # parse the dbt project once, so the code location loads fast
	touch $@

## Debian's Chromium for the browser tests (Playwright drives the system binary; no browser download).
browser:
	@command -v chromium >/dev/null || { \
	  echo "Installing Debian's chromium for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

## Run one campaign end to end on the embedded default (SQLite + chDB + provider sandbox).
demo: install
	$(PY) demo/run.py

## The whole test suite (what CI runs).
test: install browser
	$(PY) -m pytest

## The operator console (Dagster webserver + daemon) on the demo's runs: http://127.0.0.1:$(UI_PORT).
ui: install
	$(PY) demo/console.py --port $(UI_PORT)

## Regenerate the shipped sample CSV.
sample: install
	$(PY) -m orchestrator_assets.imports.sample_contacts

clean:
	rm -rf $(ALGOR_HOME) dbt_project/target dbt_project/logs
