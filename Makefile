# Set-up and everyday commands. `make demo` and `make test` install what they need first.
#
# make install creates .venv in the repository root unless a virtual environment is already
# active (VIRTUAL_ENV set), then installs the CPU build of torch and this package with its dev
# extras. Off this project's CI machines, point TORCH_INDEX at PyTorch's CPU wheel index to avoid
# the multi-GB CUDA build, e.g.
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cpu
SHELL := /bin/bash
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=

ifdef VIRTUAL_ENV
VENV := $(VIRTUAL_ENV)
else
VENV := $(CURDIR)/.venv
endif
BIN := $(VENV)/bin
STAMP := $(VENV)/.conformer-installed

.PHONY: install test test-fast demo lint bench clean help

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --upgrade pip setuptools wheel
	$(BIN)/python -m pip install "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)  ## create .venv (unless one is active) and install CPU torch + the package

test: $(STAMP)  ## run every test, slow ones included (what CI runs)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(BIN)/pytest -m "slow or not slow" --timeout=1800

test-fast: $(STAMP)  ## run the quick tests only
	$(BIN)/pytest -m "not slow" -q

demo: $(STAMP)  ## generate conformers for the bundled example SMILES with the bundled model
	$(BIN)/conformer generate data/examples/example.smi --out demo_out/example.sdf --num-confs 5 --summary

lint: $(STAMP)  ## ruff
	$(BIN)/ruff check conformer tests scripts benchmarks

bench: $(STAMP)  ## the benchmark scripts (ratios against baselines in the same process)
	$(BIN)/python benchmarks/bench_prepare.py
	$(BIN)/python benchmarks/bench_rmsd.py
	$(BIN)/python benchmarks/bench_generate.py
	$(BIN)/python benchmarks/bench_fused.py

clean:
	rm -rf demo_out .pytest_cache
