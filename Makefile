# Set-up is idempotent: each target below installs what it needs on a fresh machine.
SHELL := /bin/bash
# PYTHON: the interpreter for a new .venv (default: the newest of 3.13/3.12/3.11 found for which
# the torch build can be had). TORCH: cpu (default; the +cpu build on Linux) or cuda (GPU nodes).
# The rules are in tools/make_venv.py and docs/operations.md.
PYTHON ?=
TORCH ?= cpu
BOOTSTRAP := $(shell command -v python3 || command -v python3.13 || command -v python3.12 || command -v python3.11)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sightwire-installed
PYTEST_ARGS ?=

.PHONY: help venv redis chromium demo serve test lint bench package clean

help:
	@echo "make demo   - end-to-end demo with the tiny models (offline)"
	@echo "make test   - the whole test suite"
	@echo "make serve  - run Sightwire on http://127.0.0.1:8000 (MODELS=tiny|pretrained|PATH)"
	@echo "make lint   - ruff"
	@echo "make package - dist/sightwire-VERSION.zip: the code for a cluster's runtime_env (docs/operations.md)"
	@echo "set-up: make [PYTHON=python3.1x] [TORCH=cpu|cuda] venv"

# torch is installed first, by exact version and build (+cpu unless TORCH=cuda), so the lock's
# torch==VERSION is already met and nothing pulls the multi-GB CUDA build by default.
$(STAMP): requirements.lock pyproject.toml tools/make_venv.py
	$(BOOTSTRAP) tools/make_venv.py --venv $(VENV) --torch $(TORCH) $(if $(PYTHON),--python $(PYTHON))
	touch $(STAMP)

venv: $(STAMP)

redis:
	@command -v redis-server >/dev/null || { \
	  echo "installing redis-server"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q redis-server >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q redis-server >/dev/null; }; }
	@command -v redis-server >/dev/null

# For tests/test_render.py's headless page test (skipped without it); about 15 s from apt here.
# Best effort: nothing when chromium is present or apt is absent, and a failed install only warns.
chromium:
	@command -v chromium >/dev/null || ! command -v apt-get >/dev/null || { \
	  echo "installing chromium"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null; } || \
	  echo "warning: chromium not installed; the headless render test will be skipped"; }

demo: venv redis
	$(BIN)/sightwire demo

MODELS ?= tiny
serve: venv redis
	$(BIN)/sightwire serve --models $(MODELS)

test: venv redis chromium
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .

bench: venv redis
	@for b in benchmarks/bench_*.py; do echo "== $$b"; PYTHONPATH=. $(BIN)/python $$b || exit 1; done

package: venv
	$(BIN)/python tools/package.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache dist
