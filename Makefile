# Set-up is idempotent: each target below installs what it needs on a fresh machine.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sightwire-installed
PYTEST_ARGS ?=

.PHONY: help venv redis demo serve test lint bench clean

help:
	@echo "make demo   - end-to-end demo with the tiny models (offline)"
	@echo "make test   - the whole test suite"
	@echo "make serve  - run Sightwire on http://127.0.0.1:8000 (MODELS=tiny|pretrained|PATH)"
	@echo "make lint   - ruff"

# CPU torch is installed first, by exact version, so nothing pulls a multi-GB CUDA build.
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python -m pip install -q --no-deps -e client  # the light client (sightwire_client), for `sightwire listen`
	touch $(STAMP)

venv: $(STAMP)

redis:
	@command -v redis-server >/dev/null || { \
	  echo "installing redis-server"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q redis-server >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q redis-server >/dev/null; }; }
	@command -v redis-server >/dev/null

demo: venv redis
	$(BIN)/sightwire demo

MODELS ?= tiny
serve: venv redis
	$(BIN)/sightwire serve --models $(MODELS)

test: venv redis
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .

bench: venv redis
	@for b in benchmarks/bench_*.py; do echo "== $$b"; PYTHONPATH=. $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
