# Set-up and everyday commands. `make run` and `make test` do all the set-up on a fresh machine.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run headless lint test bench gpu-check clean

# torch==2.13.0 first: it is the CPU build on disk here; an unpinned torch pulls a 5 GB CUDA build.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/moments $(ARGS)

headless: $(STAMP)
	$(BIN)/moments run --headless $(ARGS)

# The layering (import-linter contracts in pyproject.toml) and the linter run before the tests.
lint: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest tests $(ARGS)

bench: $(STAMP)
	$(BIN)/python bench/overhead.py $(ARGS)

gpu-check: $(STAMP)
	$(BIN)/python scripts/gpu_check.py $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
