# pushauth developer commands. Everything runs from the repo-local virtualenv in .venv/.
#   make test    install redis-server, chromium, the RADIUS clients, the Node relying party and Apache with
#                mod_auth_openidc if missing, then run the test suite (real Redis processes started by the
#                tests; the console's browser tests drive /usr/bin/chromium; the RADIUS front's tests drive
#                radclient, pam_radius_auth through pamtester, sshd and ssh through expect, and slapd:
#                scripts/ensure-radius-tools, which leaves no sshd or slapd service running; the OpenID
#                Provider's tests drive openid-client, panva's certified Node RP (scripts/ensure-node-rp:
#                nodejs and npm if missing, then tests/rp/openid-client/ with npm ci) and Apache 2 with
#                mod_auth_openidc through Chromium (scripts/ensure-apache-oidc, which leaves no Apache
#                running or listening on :80))
#   make test-fast  the developers' loop, ~25 s on 2 cores: every test that needs no Redis, no pushauth
#                server, no browser and no child process, less the few property tests that take seconds each
#                (pytest -m "not integration"; tests/conftest.py sets the marker), stopping at the first
#                failure. Installs nothing beyond the virtualenv
#   make lint    ruff + mypy (strict; configured in pyproject.toml) + luacheck over the Redis scripts, each as
#                Redis gets it (scripts/lint-lua, .luacheckrc; installs Debian's lua-check if missing)
#   make demo    run the local demo
#   make demo-live  the demo, then keep it running: console, sample login page, phone on this terminal
#   make bench   run the challenge-cycle benchmark
#   make clean   remove the virtualenv, caches and build artifacts

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Rebuilt only when pyproject.toml changes (or the venv is gone).
STAMP := $(VENV)/.installed
# Extra pytest arguments, e.g. make test PYTEST_ARGS="-k redis -x"
PYTEST_ARGS ?=

.PHONY: venv test test-fast lint demo demo-live bench ensure-redis ensure-chromium ensure-radius-tools ensure-node-rp ensure-apache-oidc ensure-luacheck clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	PY=$(PY) scripts/ensure-venv
	$(PY) -m venv $(VENV) && $(BIN)/pip install -q --upgrade pip && $(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

ensure-redis:
	scripts/ensure-redis

ensure-chromium:
	scripts/ensure-chromium

ensure-radius-tools:
	scripts/ensure-radius-tools

ensure-node-rp:
	scripts/ensure-node-rp

ensure-apache-oidc:
	scripts/ensure-apache-oidc

ensure-luacheck:
	scripts/ensure-luacheck

test: venv ensure-redis ensure-chromium ensure-radius-tools ensure-node-rp ensure-apache-oidc
	PUSHAUTH_TESTS_NO_SKIP=1 $(BIN)/pytest $(PYTEST_ARGS)

test-fast: venv
	$(BIN)/pytest -x -m "not integration" $(PYTEST_ARGS)

lint: venv ensure-luacheck
	$(BIN)/ruff check . && $(BIN)/mypy && $(BIN)/python scripts/lint-lua

demo: venv
	$(BIN)/pushauth demo

demo-live: venv
	$(BIN)/pushauth demo --serve

bench: venv ensure-redis
	$(BIN)/python bench/cycle.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
