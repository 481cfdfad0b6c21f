# Two commands do all the set-up: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU build of torch first, so the project's `torch>=2.2` range installs nothing more: where its wheel lies on
# disk (TORCH_WHEEL, the file pip's configuration here finds), uv installs that very file (2.4 s; pip took ~8 s to
# unpack it); elsewhere pip installs TORCH_SPEC, as its configuration finds it. hnswlib by pip, as the registry has
# it only as source: pip keeps the wheel it builds, uv built it again (~40 s of C++) on every install. The rest by
# uv, from the same registry, in half pip's time, falling back to pip. The environment starts without pip (its
# ensurepip step took ~4 s); the system's pip puts pip, uv and hnswlib into it. Nothing is byte-compiled at install
# time (pip's compile step alone took ~65 CPU-s for files never imported): `test` lets Python cache what the suite
# imports on first use, even where PYTHONDONTWRITEBYTECODE is set, as on this machine type.
TORCH_SPEC ?= torch==2.13.0
TORCH_WHEEL ?= $(firstword $(wildcard /opt/wheels/torch-2.13.0+cpu-*.whl))

.PHONY: demo test lint install bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv --without-pip $(VENV)
	$(PYTHON) -m pip --python $(BIN)/python install --quiet --no-compile pip uv hnswlib
	$(if $(TORCH_WHEEL),$(BIN)/uv pip install --quiet --python $(BIN)/python "$(TORCH_WHEEL)",$(BIN)/python -m pip install --quiet --no-compile "$(TORCH_SPEC)")
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e ".[test]" \
		|| $(BIN)/python -m pip install --quiet --no-compile -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/shardwalk run demo

# One pytest-xdist worker more than cores (at most 5), each with its own Ray and S3 server: a worker waiting on its
# actors, a node's death or a store's retries leaves a core idle otherwise (2 workers: 7-9 % idle on 2 cores). The
# tests of a group run on one worker (every multi-node test shares one), longest work first (tests/conftest.py).
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$((n + 1)))
PYTEST_PARALLEL ?= -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder

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
