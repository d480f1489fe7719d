# One entry point for people and CI. `make demo` runs the main job, `make test` the suite.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install redis prometheus tools test lint typecheck unit integration chaos soak bench demo clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[worker,dev]'
	touch $(STAMP)

install: $(STAMP)

# A redis-server binary is needed by the tests and the demo: install Debian's when missing.
redis:
	@command -v redis-server >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && apt-get install -y -qq redis-server) >/dev/null; \
	  else echo "redis-server is missing: install it (Debian: sudo apt-get install redis-server)"; exit 2; fi; }

# Debian's prometheus, for the Prometheus health-source integration test.
prometheus:
	@command -v prometheus >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && apt-get install -y -qq prometheus) >/dev/null; \
	  else echo "prometheus is missing: install it (Debian: sudo apt-get install prometheus)"; fi; }

# The other programs the tests drive as a user would (Debian packages): promtool comes with
# prometheus; chromium renders the report and the dashboard; tmux hosts `recovery watch`;
# faketime skews one process's clock; redis-sentinel runs the failover test.
TOOLS := chromium:chromium tmux:tmux faketime:faketime redis-sentinel:redis-sentinel
tools:
	@missing=""; for pair in $(TOOLS); do bin=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$bin >/dev/null || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing) >/dev/null; \
	  else echo "missing:$$missing (Debian: sudo apt-get install$$missing); their tests skip"; fi; fi

lint: install
	$(BIN)/ruff check workers tests bench
	$(BIN)/ruff format --check workers tests bench

typecheck: install
	$(BIN)/mypy

test: install redis prometheus tools lint typecheck
	$(BIN)/pytest -q -m "not soak" tests

unit: install
	$(BIN)/pytest -q tests/unit

integration: install redis
	$(BIN)/pytest -q tests/integration

chaos: install redis
	$(BIN)/pytest -q -m "not soak" tests/chaos

soak: install redis
	$(BIN)/pytest -q -m soak tests/chaos

bench: install redis
	$(BIN)/python bench/decision.py
	$(BIN)/python bench/flags.py
	$(BIN)/python bench/orchestration.py
	$(BIN)/python bench/plan.py
	$(BIN)/python bench/rollback_latency.py
	$(BIN)/python bench/api.py

demo: install redis
	$(BIN)/recovery demo

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
