# One entry point per job. Everything installs into .venv; local services start only when needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: run test test-unit fuzz lint perf deps clean

$(STAMP): requirements.txt requirements-local.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -r requirements-dev.txt
	touch $(STAMP)

## deps: system packages the local stack needs (Debian's redis-server), installed when missing.
deps:
	@command -v redis-server >/dev/null || [ -x /usr/sbin/redis-server ] || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	  else echo "redis-server is missing: run 'sudo apt-get install -y redis-server' (or set REDIS_URL to a running Redis)"; exit 1; fi; }

## run: the whole stack in the foreground (API :8000, Flower :5555). Ctrl-C stops all of it.
run: $(STAMP) deps
	$(PY) -m devtools.stack

## test: unit, integration and end-to-end tests against real services the suite starts itself.
test: $(STAMP) deps
	$(PY) -m pytest $(PYTEST_ARGS)

## fuzz: the fuzzers only, long: 10,000 examples per hypothesis property, longer schemathesis, socket and Kafka runs.
fuzz: $(STAMP) deps
	FUZZ_PROFILE=long $(PY) -m pytest -m fuzz --timeout=7200 $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(PY) -m pytest -m unit $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check settings tasks webapp bridge devtools perf tests
	$(VENV)/bin/mypy

## perf: load scenarios against a stack they start themselves; figures and plots in perf/results/.
perf: $(STAMP) deps
	$(PY) -m perf $(if $(SCENARIO),--scenario $(SCENARIO),)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .stack
