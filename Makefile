# Two commands do all set-up: `make demo` and `make test`. Both create .venv with pip when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
WORKSPACE ?= demo-workspace
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_USAGE_STATS_ENABLED := 0
export PYTHONUNBUFFERED := 1
# the venv is ~6.6 GB (torch's CUDA wheels); pip's cache would hold a second copy of every wheel it
# builds or downloads, and a CI disk with little room left has run out mid-install: keep no cache
export PIP_NO_CACHE_DIR := 1

.PHONY: venv demo test test-fast lint bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check rtl tests benchmarks

test: $(STAMP) lint
	$(BIN)/python -m pytest tests; rc=$$?; if [ $$rc -eq 5 ]; then exit 0; fi; exit $$rc

# the fast lane: no Ray, no subprocess, no pretraining (tests/conftest.py marks the rest `slow`)
test-fast: $(STAMP) lint
	$(BIN)/python -m pytest -m "not slow" -q tests

demo: $(STAMP)
	$(BIN)/rtl demo --workspace $(WORKSPACE)

bench: $(STAMP)
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) $(WORKSPACE) .pytest_cache .ruff_cache
