# Two commands do all the set-up: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU build of torch; installed first so the project's `torch>=2.2` range installs nothing more.
# pip byte-compiles what it installs (~65 CPU-s): keep it. With --no-compile every process would compile its
# imports again wherever PYTHONDONTWRITEBYTECODE is set (as on this machine type): the suite took 2x as long.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test lint install bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/shardwalk run demo

# One pytest-xdist worker per core (at most 4), each with its own Ray and S3 server; the tests of a group
# run on one worker (every multi-node test shares one), longest work first (GROUPS in tests/conftest.py).
PYTEST_PARALLEL ?= -n auto --maxprocesses=4 --dist loadgroup --no-loadscope-reorder

# The checkout's modules byte-compiled once: with PYTHONDONTWRITEBYTECODE set (as on this machine type) nothing
# caches them, and each of the suite's ~650 processes (Ray actors, CLI runs) would compile its imports again.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m compileall -q core workers pipelines shardwalk benchmarks > /dev/null
	$(BIN)/python -m pytest -q $(PYTEST_PARALLEL)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) runs .pytest_cache
