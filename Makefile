# The two README commands are `make demo` and `make test`; everything else is what they need.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
AZURITE_VERSION := 3.35.0
PYTEST_ARGS ?=

.PHONY: help system-deps install demo test bench lint clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

system-deps:  ## Debian packages the stack and tests use (idempotent; uses sudo when not root)
	@scripts/install-system-deps

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -U pip wheel setuptools
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

.tools/node_modules/.bin/azurite-blob:
	mkdir -p .tools
	test -f .tools/package.json || echo '{"name":"compute-pools-tools","private":true}' > .tools/package.json
	cd .tools && npm install --no-audit --no-fund --loglevel=error azurite@$(AZURITE_VERSION)

# The JavaScript Service Bus SDK the emulator tests drive (tests/emulator/test_js_sdk.py), pinned by the
# lock file: npm ci installs exactly that tree, and again whenever the lock file changes.
JS_SDK_DIR := tests/emulator/js
$(JS_SDK_DIR)/node_modules/.package-lock.json: $(JS_SDK_DIR)/package-lock.json
	cd $(JS_SDK_DIR) && npm ci --no-audit --no-fund --loglevel=error

install: $(VENV)/.installed .tools/node_modules/.bin/azurite-blob $(JS_SDK_DIR)/node_modules/.package-lock.json  ## create .venv and install everything

demo: system-deps install  ## a local pool processing sample submissions end to end
	$(VENV)/bin/pool demo

test: system-deps install  ## run every test (slow ones included); fails if no test ran
	@set +e; $(VENV)/bin/pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing on purpose" >&2; exit 1; fi; exit $$rc

bench: install  ## run the benchmarks and print their tables
	$(PY) -m benchmarks

lint: install  ## ruff (with its security rules), the import contracts (.importlinter), ansible-lint
	$(VENV)/bin/ruff check worker tests infra benchmarks scripts
	$(VENV)/bin/lint-imports
	cd playbooks && ../$(VENV)/bin/ansible-lint

clean:
	rm -rf $(VENV) .tools .pool $(JS_SDK_DIR)/node_modules
