# rawchat: `make run` starts the server, `make test` runs lint, type checks and every test.
# Both create the virtual environment and install what they need on first use, exactly the
# versions in the lock files (requirements/*.txt); `make upgrade` moves the locks forward.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8080

#: What `make run` needs, and what tests and benchmarks need besides (a superset of it).
LOCK_RUN := requirements/run.txt
LOCK_DEV := requirements/dev.txt

PIP := $(BIN)/python -m pip --disable-pip-version-check
# Exactly what a lock says: every package pinned and checked against its hashes, and
# nothing resolved afresh (--no-deps: the lock already lists every dependency).
INSTALL_LOCKED := $(PIP) install --quiet --require-hashes --no-deps
# rawchat itself, built with the locked setuptools rather than whatever is newest today.
INSTALL_SELF := $(PIP) install --quiet --no-deps --no-build-isolation -e .
# How both locks are made: hashes for every file of every pinned version, setuptools and
# pip included, and no trace of this machine's own package indexes.
COMPILE := $(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --all-build-deps \
	--strip-extras --no-emit-index-url --no-emit-find-links

.PHONY: run test lint typecheck pytest system-deps bench bench-peers lock upgrade clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when a lock or the project's metadata changes.
$(VENV)/.installed: $(LOCK_RUN) pyproject.toml | $(BIN)/python
	$(INSTALL_LOCKED) -r $(LOCK_RUN)
	$(INSTALL_SELF)
	$(PIP) check
	touch $@

$(VENV)/.installed-dev: $(LOCK_DEV) pyproject.toml | $(BIN)/python
	$(INSTALL_LOCKED) -r $(LOCK_DEV)
	$(INSTALL_SELF)
	$(PIP) check
	touch $(VENV)/.installed $@

run: $(VENV)/.installed
	$(BIN)/rawchat --uvloop --host $(HOST) --port $(PORT)

# System packages the tests drive: Debian's Chromium for the browser tests,
# redis-server for the broker tests and nginx for the reverse-proxy test, as
# command:package pairs. Installed with apt-get only when missing (nginx lives
# in /usr/sbin, which a user's PATH may lack).
SYSTEM_PACKAGES := chromium:chromium redis-server:redis-server nginx:nginx
system-deps:
	@missing=""; for pair in $(SYSTEM_PACKAGES); do \
		PATH="$$PATH:/usr/sbin:/sbin" command -v $${pair%%:*} >/dev/null 2>&1 \
			|| missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check rawchat tests benchmarks

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy --strict rawchat

pytest: $(VENV)/.installed-dev system-deps bench-peers
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

bench: $(VENV)/.installed-dev bench-peers
	$(BIN)/python -m benchmarks --compare

# The peers that are not Python: node's ws, installed exactly as its committed lock says
# (npm ci), again only when the lock changes. Debian's nodejs and npm only when node is missing.
NODE_WS := benchmarks/peers/node_ws
bench-peers: $(NODE_WS)/node_modules/.installed

$(NODE_WS)/node_modules/.installed: $(NODE_WS)/package-lock.json $(NODE_WS)/package.json
	@command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || { \
		echo "installing nodejs npm with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }
	cd $(NODE_WS) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Re-resolve the locks after a change to the dependencies in pyproject.toml, keeping every
# version that still fits. The run lock is resolved within the dev lock, so that the two
# never disagree on a version.
lock: $(VENV)/.installed-dev
	$(COMPILE) $(LOCK_FLAGS) --extra dev --extra bench -o $(LOCK_DEV) pyproject.toml
	$(COMPILE) $(LOCK_FLAGS) -c $(LOCK_DEV) -o $(LOCK_RUN) pyproject.toml

# Move every pinned version to the newest release the ranges in pyproject.toml allow,
# install exactly that (pip-sync also removes what the lock no longer lists), and run the
# whole suite on it. Commit the new locks with whatever the upgrade needed.
upgrade: LOCK_FLAGS := --upgrade
upgrade: lock
	$(BIN)/pip-sync --quiet $(LOCK_DEV)
	$(INSTALL_SELF)
	$(PIP) check
	touch $(VENV)/.installed $(VENV)/.installed-dev
	$(MAKE) test

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache test-artifacts
