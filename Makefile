# Postroom developer commands. See docs/development.md.
#   make run               API + workers (+ a local RabbitMQ if none answers) under honcho
#   make test              the whole test suite
#   make test-reliability  only the fault-injection scenarios (-m reliability)
#   make bench             benchmarks beside raw RabbitMQ, its HTTP API, bare Flask, raw Peewee
#                          and the naive design (bench/README.md); make bench-quick: < 2 min smoke
#   make venv | clean

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Written after a successful install; reinstalled when older than setup.cfg/pyproject.toml
# or than a top-level package's __init__.py (the editable install maps top-level packages
# found at install time, so a package added later needs a reinstall).
STAMP := $(VENV)/.postroom-installed
PACKAGE_INITS := $(wildcard app/__init__.py workers/__init__.py config/__init__.py)
PORT ?= 8000
PYTEST_ARGS ?=
TEST_POSTGRES_URL := postgresql://postgres@127.0.0.1:5432/test

BENCH_STAMP := $(VENV)/.postroom-bench-installed
BENCH_ARGS ?=

.PHONY: venv run test test-reliability bench bench-quick clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml $(PACKAGE_INITS)
	@test -x $(PY) || { echo "creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $@

# bin/ensure-rabbitmq writes var/run/Procfile: the Procfile as is when a broker answers at
# POSTROOM_AMQP_URL, else the Procfile (each line waiting for the broker) plus `broker:`.
# honcho puts each process in its own process group and sends SIGTERM to every group on
# Ctrl-C, so everything started here (the broker included) stops with it.
run: venv
	bin/ensure-rabbitmq --procfile Procfile --write var/run/Procfile
	$(VENV)/bin/postroom db upgrade
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" exec $(VENV)/bin/honcho \
	    -f "$(CURDIR)/var/run/Procfile" -d "$(CURDIR)" start -p $(PORT)

# POSTROOM_TEST_POSTGRES_URL: kept when set; else the local PostgreSQL, if it answers.
define run_pytest
	@if [ -z "$${POSTROOM_TEST_POSTGRES_URL:-}" ] && $(PY) -c 'import sys, psycopg2; \
	    psycopg2.connect(sys.argv[1], connect_timeout=3).close()' '$(TEST_POSTGRES_URL)' >/dev/null 2>&1; then \
	    export POSTROOM_TEST_POSTGRES_URL='$(TEST_POSTGRES_URL)'; \
	fi; \
	echo "POSTROOM_TEST_POSTGRES_URL=$${POSTROOM_TEST_POSTGRES_URL:-(unset: PostgreSQL tests skip)}"; \
	set -x; exec $(PY) -m pytest $(1)
endef

test: venv
	$(call run_pytest,$(PYTEST_ARGS))

test-reliability: venv
	$(call run_pytest,-m reliability $(PYTEST_ARGS))

# The bench extra (matplotlib, py-spy) on top of the venv; wrk comes from apt (bench/services.py).
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	@touch $@

# Starts its own broker (free ports, management plugin), API and workers; SQLite under
# var/bench/ (BENCH_ARGS='--db postgres': the local PostgreSQL `test` db, in its own schema).
bench: venv $(BENCH_STAMP)
	$(PY) -m bench.run --mode full $(BENCH_ARGS)

bench-quick: venv $(BENCH_STAMP)
	$(PY) -m bench.run --mode quick $(BENCH_ARGS)

clean:
	rm -rf var $(VENV)
