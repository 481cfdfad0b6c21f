# Two commands do all the set-up: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU build of torch, installed first by pip (whose configuration here finds it on disk) so the project's
# `torch>=2.2` range installs nothing more, and hnswlib, which the registry has only as source: pip keeps the wheel
# it builds, uv built it again (~40 s of C++) on every install. The rest by uv, from the same registry, in half
# pip's time, falling back to pip. Nothing is byte-compiled at install time (pip's compile step alone took ~65
# CPU-s for files never imported): `test` lets Python cache what the suite imports on first use, even where
# PYTHONDONTWRITEBYTECODE is set, as on this machine type.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test lint install bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --no-compile "$(TORCH_SPEC)" hnswlib uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e ".[test]" \
		|| $(BIN)/python -m pip install --quiet --no-compile -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/shardwalk run demo

# One pytest-xdist worker per core (at most 4), each with its own Ray and S3 server; the tests of a group
# run on one worker (every multi-node test shares one), longest work first (GROUPS in tests/conftest.py).
PYTEST_PARALLEL ?= -n auto --maxprocesses=4 --dist loadgroup --no-loadscope-reorder

# Bytecode is cached on first import (PYTHONDONTWRITEBYTECODE emptied): with it set, as on this machine type, each
# of the suite's ~650 processes (Ray actors, CLI runs) would compile its imports again; the suite took 2x as long.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -q $(PYTEST_PARALLEL)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) runs .pytest_cache
