# One-command set-up: `make demo` and `make test` install into .venv as needed.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PLATFORM_HOME ?= $(CURDIR)/var
export PLATFORM_HOME
export DAGSTER_HOME ?= $(PLATFORM_HOME)/dagster

.PHONY: install demo demo-dpo ingest test test-fast lint format dev dev-team dev-team-stop drop-day backfill clean-var bench

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

# DEMO_ARGS: the demo's flags, e.g. DEMO_ARGS="--from 2026-01-10 --to 2026-01-12 --skip-training"
# (needed with PLATFORM_DATA_SOURCE=files: see docs/bring-your-own-data.md).
demo: install
	$(PY) -m dagster_project.demo $(DEMO_ARGS)

# The demo with a shorter SFT run, then preference training (DPO) of its champion, evaluated the same way.
# DEMO_DPO_SFT_STEPS: the SFT run's steps (the training default, 700, is the full SFT demo: about 75 s more).
DEMO_DPO_SFT_STEPS ?= 500
demo-dpo: install
	$(PY) -m dagster_project.demo --preference --sft-steps $(DEMO_DPO_SFT_STEPS) $(DEMO_ARGS)

# Catalog -> days FROM..TO (YYYY-MM-DD, UTC) -> base model if none yet -> shards, in one process on DAGSTER_HOME.
ingest: install
	@test -n "$(FROM)" -a -n "$(TO)" || { echo "usage: make ingest FROM=2026-01-01 TO=2026-01-07"; exit 1; }
	$(PY) -m dagster_project.ingest --from $(FROM) --to $(TO)

# Two pytest-xdist workers, one test file at a time each (tests/conftest.py: pytest_xdist_make_scheduler).
PYTEST := $(PY) -m pytest -q -p no:cacheprovider -n 2

test: install
	$(PYTEST)

test-fast: install
	$(PYTEST) -m "not slow"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

dev: install
	$(PY) -m dagster_project.instance
	$(VENV)/bin/dagster dev -w workspace.yaml

# The team set-up on this machine: PostgreSQL (Debian's package) for the DuckLake catalog and Dagster's storage,
# Parquet under TEAM_HOME/lake, several day runs at once (docs/warehouse.md). PostgreSQL outlives dagster dev.
TEAM_HOME ?= $(CURDIR)/var/team
dev-team: install
	PLATFORM_HOME=$(TEAM_HOME) DAGSTER_HOME=$(TEAM_HOME)/dagster $(PY) -m dagster_project.team_dev

dev-team-stop: install
	$(PY) -m core.local_postgres stop --dir $(TEAM_HOME)/postgres

# Drop the next synthetic day into the landing area (what a daily upstream export would do), with the same
# synthetic world as the assets (SYNTHETIC_* and PLATFORM_PARTITION_START, defaults as in core/settings.py).
drop-day: install
	$(PY) -m core.synthetic drop --landing $(PLATFORM_HOME)/landing

# Backfill ingestion_job over FROM..TO (YYYY-MM-DD) on the running `make dev` (its daemon launches the runs).
backfill: install
	@test -n "$(FROM)" -a -n "$(TO)" || { echo "usage: make backfill FROM=2026-01-02 TO=2026-01-04"; exit 1; }
	$(VENV)/bin/dagster job backfill -w workspace.yaml -j ingestion_job --from $(FROM) --to $(TO) --noprompt

clean-var:
	rm -rf $(PLATFORM_HOME)

# Benchmarks against TRL (see "Benchmarks" in README.md): installs the `bench` extra
# (trl, datasets, accelerate) into .venv. BENCH_QUICK=1 runs the smaller sizes.
bench: install
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m benchmarks.run
