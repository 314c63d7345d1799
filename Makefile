# Each target bootstraps .venv from requirements.txt when it is missing or stale (idempotent).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
HASH := $(shell cat requirements.txt pyproject.toml | sha256sum | cut -c1-16)
STAMP := $(VENV)/.rocketctr-$(HASH)
PYTEST_FLAGS ?=

.PHONY: demo test test-slow test-all env clean peer-env wheel

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	@rm -f $(VENV)/.rocketctr-* && touch $(STAMP)

env: $(STAMP)

demo: $(STAMP)
	$(BIN)/rocketctr demo $(DEMO_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_FLAGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow $(PYTEST_FLAGS) || [ $$? -eq 5 ]  # 5: no slow test collected

test-all: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_FLAGS)

# dist/rocketctr-VERSION-py3-none-any.whl: what `pip install` users get and what Beam workers install
# (`--extra_package`, docs/RUNNERS.md). build/ is removed first: setuptools would pack stale files left in it.
wheel: $(STAMP)
	rm -rf build
	$(BIN)/python -m pip wheel --quiet --disable-pip-version-check --no-deps --no-build-isolation -w dist .

# Bench-only DeepCTR env for `rocketctr bench peer` (requirements-peer.txt); never part of the main env.
PEER_VENV := .venv-peer
PEER_STAMP := $(PEER_VENV)/.peer-$(shell sha256sum requirements-peer.txt | cut -c1-16)

$(PEER_STAMP): requirements-peer.txt
	@test -x $(PEER_VENV)/bin/python || $(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-peer.txt
	$(PEER_VENV)/bin/python -m pip check
	@rm -f $(PEER_VENV)/.peer-* && touch $(PEER_STAMP)

peer-env: $(PEER_STAMP)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
