# tidesync: two commands matter.  `make demo` and `make test`.
# Everything else here is what those two need on a fresh machine.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
HOST   ?= 127.0.0.1
PORT   ?= 8765
DEMO_DB ?= demo.db

.PHONY: setup chromium site demo serve test test-unit test-integration test-pyodide test-e2e lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed chromium

# Debian's Chromium: Playwright's own browser download cannot work on these machines.
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
	  echo "installing Chromium from Debian's packages"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null || \
	  (sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null; \
	fi

# The servable site: pinned Pyodide from npm, the tidesync wheel, the JS shim and the demo.
site: $(VENV)/.installed
	$(PY) build/build_site.py

demo: setup site
	@echo ""
	@echo "  tidesync demo: open http://$(HOST):$(PORT)/ in two windows (Ctrl-C stops the server)"
	@echo ""
	$(PY) -m tidesync serve --host $(HOST) --port $(PORT) --db $(DEMO_DB) --site _site --seed-demo --allow-seed

serve: $(VENV)/.installed
	$(PY) -m tidesync serve --host $(HOST) --port $(PORT) --db $(DEMO_DB)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check py_src tests bench build
	$(VENV)/bin/mypy py_src

test-unit: $(VENV)/.installed
	$(PY) -m pytest -q tests/unit

test-integration: $(VENV)/.installed
	$(PY) -m pytest -q tests/integration

test-pyodide: setup site
	$(PY) -m pytest -q tests/pyodide

test-e2e: setup site
	$(PY) -m pytest -q tests/e2e

# Separate pytest processes: Playwright's sync API keeps an event loop running in the
# main thread for the whole session, which pytest-asyncio's tests cannot share, and
# tests/pyodide and tests/e2e each start their own session-scoped Playwright.
test: setup site lint
	$(PY) -m pytest -q tests/unit tests/integration
	$(PY) -m pytest -q tests/pyodide
	$(PY) -m pytest -q tests/e2e

# Benchmarks (docs/performance.md): headless Chromium + CPython on this machine, ~15 min;
# `make bench BENCH_ARGS=--quick` for a ~3-minute run. Comparison engines are pinned in
# bench/package-lock.json; matplotlib is a bench-only dependency (the PNG plot).
BENCH_ARGS ?=
bench: setup site
	npm ci --prefix bench --no-audit --no-fund --loglevel=error
	$(PIP) install -q matplotlib
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) _site dist build/node_modules .pytest_cache
