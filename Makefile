# The front door: `make run` and `make test` set everything up the first time.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PROTOS := $(wildcard protos/mcp/v1/*.proto)
SDK := sdk/python
STAMP_DEPS := $(VENV)/.installed $(SDK)/mcp_sdk/proto/.stamp

.PHONY: run test lint typecheck proto buf-lint bench node clean setup console-assets browser

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

# The console renders graphs with Mermaid from npm, served by the console itself (no CDN).
MERMAID := mcp_server/console/static/vendor/mermaid.min.js
$(MERMAID): node_modules/.installed
	mkdir -p $(dir $@)
	cp node_modules/mermaid/dist/mermaid.min.js $@
	gzip -9 -k -f $@  # 3.5 MB; served as 1 MB to browsers that accept gzip

console-assets: $(MERMAID)

# The console's browser tests drive Debian's chromium through Playwright (no browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	    else echo "the console tests need chromium: sudo apt-get install chromium" >&2; exit 1; fi; }

## run: serve on 127.0.0.1:50051 with the bundled plugins on the embedded store, the console on :8080
run: setup console-assets
	$(PY) -m mcp_server --bundled-plugins --console-listen 127.0.0.1:8080 $(ARGS)

## test: lint, type-check, then the whole suite (starts a private Redis if none answers)
# in TEST_PROCESSES processes (0: in this one), each given whole files: a file's module-scoped
# server and its test order stay in one process
TEST_PROCESSES ?= 2
test: setup node console-assets browser lint
	$(PY) -m pytest -n $(TEST_PROCESSES) --dist loadfile $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check mcp_server protocol_plugins tests bench $(SDK)
	$(VENV)/bin/ruff format --check mcp_server protocol_plugins tests bench $(SDK)
	$(VENV)/bin/mypy
	node --check mcp_server/console/static/console.js
	node --check bench/unary_plugin.js

buf-lint: node
	npx buf lint protos

bench: setup
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m bench

clean:
	rm -rf $(VENV) node_modules $(SDK)/mcp_sdk/proto .mcp mcp_server/console/static/vendor
