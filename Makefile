# The two commands: `make dev` runs llmq, `make test` runs the test suite.
# Both create or reuse .venv and install the project into it.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: dev test test-public-paths browser js lint bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,embedded]'
	@touch $(STAMP)

dev: $(STAMP)
	$(BIN)/llmq dev $(ARGS)

# The suite compiles the sources and its test modules once before its workers start
# (tests/bytecode.py), also where Python writes no bytecode (PYTHONDONTWRITEBYTECODE).
test: $(STAMP) browser js
	$(BIN)/python -m pytest $(ARGS)

# The end-to-end chat, stream, Responses, deadline and quota tests again with every library
# shortcut off (llmq/_fast: LLMQ_FAST_PATHS=0), so the public paths stay correct.
PUBLIC_PATH_TESTS = tests/e2e/test_openai_sdk.py tests/e2e/test_responses.py \
	tests/e2e/test_deadlines.py tests/e2e/test_reservations.py tests/e2e/test_tenancy.py
test-public-paths: $(STAMP)
	LLMQ_FAST_PATHS=0 $(BIN)/python -m pytest $(PUBLIC_PATH_TESTS) $(ARGS)
# The JavaScript clients the tests drive, each folder pinned by its package-lock.json:
# tests/js (the Messages API: @anthropic-ai/sdk, Claude Code) and tests/js_openai (the client
# matrix: openai-node, the AI SDK). Without npm those tests skip, naming the command.
JS_STAMP = tests/js/node_modules/.package-lock.json
JS_OPENAI_STAMP = tests/js_openai/node_modules/.package-lock.json
js: $(JS_STAMP) $(JS_OPENAI_STAMP)
tests/%/node_modules/.package-lock.json: tests/%/package-lock.json
	@if command -v npm >/dev/null; then \
	  (cd tests/$* && npm ci --no-audit --no-fund --loglevel=error) \
	    || echo "npm ci failed: the JavaScript client tests will skip (cd tests/$* && npm ci)"; \
	else \
	  echo "no npm: the JavaScript client tests will skip (apt-get install nodejs npm; cd tests/$* && npm ci)"; \
	fi

# The console's browser tests need Debian's chromium and chromium-driver. As root with apt,
# install them when missing; otherwise (or if that fails) those tests skip, naming the command.
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium and chromium-driver for the console's browser tests"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      chromium chromium-driver >/dev/null) || echo "could not install chromium: browser tests will skip"; \
	  else \
	    echo "no chromium/chromedriver: browser tests will skip (apt-get install chromium chromium-driver)"; \
	  fi; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/overhead.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache tests/js_openai/node_modules
