# Segflow's developer commands. `make up` and `make test` work on a fresh machine: the first call
# creates .venv and installs the project into it.
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: up test test-slow lint fmt bench clean browser

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# durable-rules builds its C engine at -O0 unless CPPFLAGS asks for -O2 (8-60% faster).
	CPPFLAGS=-O2 $(BIN)/python -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

# `make up DEMO=1` adds the simulated shop (`segflow up --demo`).
up: $(STAMP)
	$(BIN)/segflow up --port $(PORT)$(if $(DEMO), --demo)

# Tests write nothing into the checkout: no bytecode, no pytest cache (pyproject.toml), hypothesis's
# examples in the temporary directory (tests/conftest.py), data in each test's own directory.
test: $(STAMP) lint browser
	PYTHONDONTWRITEBYTECODE=1 $(BIN)/python -m pytest -m "not slow"

test-slow: $(STAMP)
	PYTHONDONTWRITEBYTECODE=1 $(BIN)/python -m pytest -m slow

# The browser tests drive Debian's Chromium (tests/browser); installed here when missing and
# this user may (root with apt-get), else they are skipped (outside CI) with the reason.
browser:
	@test -x /usr/bin/chromium || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
			|| { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends chromium >/dev/null; }; \
		else echo "no /usr/bin/chromium: browser tests skipped (sudo apt-get install chromium)"; fi; }

# Style, types (the tests' too) and the direction of imports (pyproject.toml's contracts).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy app pipelines tests
	$(BIN)/lint-imports

fmt: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Every benchmark in turn (minutes); `make bench BENCH=rules` runs one. With options:
# `segflow bench NAME OPTIONS` (`segflow bench NAME --help` lists them).
bench: $(STAMP)
	@set -e; for name in $(or $(BENCH),ingest pipeline latency crash rules dispatch corrections retention rule_saves admin_pages clustering); do \
		echo "== bench/$$name.py"; $(BIN)/segflow bench $$name; done

clean:
	rm -rf $(VENV) .segflow .pytest_cache .mypy_cache .ruff_cache
