# Two commands do all the set-up: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU build of torch; installed first so the project's `torch>=2.2` range installs nothing more.
# --no-compile: pip would byte-compile every installed module (~65 CPU-s, torch and Ray are large); Python
# compiles the ones actually imported, once, on first import.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test lint install bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-compile "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet --no-compile -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/shardwalk run demo

# One pytest-xdist worker per core (at most 4), each with its own Ray and S3 server; the tests of a group
# run on one worker (every multi-node test shares one), longest work first (GROUPS in tests/conftest.py).
PYTEST_PARALLEL ?= -n auto --maxprocesses=4 --dist loadgroup --no-loadscope-reorder

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q $(PYTEST_PARALLEL)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) runs .pytest_cache
