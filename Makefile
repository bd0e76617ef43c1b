# The front door: `make run` and `make test` set everything up the first time.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PROTOS := $(wildcard protos/mcp/v1/*.proto)
SDK := sdk/python
STAMP_DEPS := $(VENV)/.installed $(SDK)/mcp_sdk/proto/.stamp

.PHONY: run test lint typecheck proto buf-lint bench node clean setup

setup: $(STAMP_DEPS)

# Both packages, editable: the SDK (contract code, client, plugin side) and the server on it.
$(VENV)/.installed: pyproject.toml $(SDK)/pyproject.toml $(SDK)/setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e './$(SDK)[yaml]' -e '.[dev]'
	touch $@

# The contract code is generated from protos/, never committed (the SDK's build does the same).
$(SDK)/mcp_sdk/proto/.stamp: $(PROTOS) $(SDK)/codegen.py $(VENV)/.installed
	$(PY) $(SDK)/codegen.py
	touch $@

proto: $(SDK)/mcp_sdk/proto/.stamp

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

node: node_modules/.installed

## run: serve on 127.0.0.1:50051 with the bundled plugins on the embedded store
run: setup
	$(PY) -m mcp_server --bundled-plugins $(ARGS)

## test: lint, type-check, then the whole suite (starts a private Redis if none answers)
test: setup node lint
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check mcp_server protocol_plugins tests bench $(SDK)
	$(VENV)/bin/mypy

buf-lint: node
	npx buf lint protos

bench: setup
	$(PY) -m bench

clean:
	rm -rf $(VENV) node_modules $(SDK)/mcp_sdk/proto .mcp
