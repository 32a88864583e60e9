# One-command set-up: `make demo` and `make test` install into .venv as needed.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PLATFORM_HOME ?= $(CURDIR)/var
export PLATFORM_HOME
export DAGSTER_HOME ?= $(PLATFORM_HOME)/dagster

.PHONY: install demo test test-fast lint format dev drop-day clean-var

# torch==2.13.0 first and explicitly: it is the CPU build on local disk; a looser
# requirement would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m dagster_project.demo

test: install
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: install
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

dev: install
	$(PY) -m dagster_project.instance
	$(VENV)/bin/dagster dev -w workspace.yaml

# Drop the next synthetic day into the landing area (what a daily upstream export would do).
drop-day: install
	$(PY) -m core.synthetic drop --landing $(PLATFORM_HOME)/landing

clean-var:
	rm -rf $(PLATFORM_HOME)
