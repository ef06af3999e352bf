# rawchat: `make run` starts the server, `make test` runs lint, type checks and every test.
# Both create the virtual environment and install what they need on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: run test lint typecheck pytest system-deps bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall only when the project's metadata changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(VENV)/.installed $@

run: $(VENV)/.installed
	$(BIN)/rawchat --uvloop --host $(HOST) --port $(PORT)

# System packages the tests drive: Debian's Chromium for the browser tests and
# redis-server for the broker tests. Installed with apt-get only when missing.
SYSTEM_PACKAGES := chromium:chromium redis-server:redis-server
system-deps:
	@missing=""; for pair in $(SYSTEM_PACKAGES); do \
		command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check rawchat tests benchmarks

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy --strict rawchat

pytest: $(VENV)/.installed-dev system-deps
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

bench: $(VENV)/.installed-dev
	$(BIN)/python -m benchmarks --compare

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache test-artifacts
