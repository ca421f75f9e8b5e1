# reprlab — `make demo` and `make test` do all set-up on a fresh clone (venv, install, data).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA   := $(or $(REPRLAB_DATA),outputs/data)
MNIST  := $(DATA)/MNIST/raw/t10k-labels-idx1-ubyte

.PHONY: help setup data demo test test-all lint bench clean

help:
	@echo "make demo      set up, then train a standard and a robust MNIST CNN, evaluate, compare (CKA)"
	@echo "make test      set up, then run the fast test suite"
	@echo "make test-all  also the slow and GPU tests"
	@echo "make lint      ruff check + format check"
	@echo "make bench     the speed benchmarks in scripts/"

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

setup: $(STAMP)

$(MNIST): | $(STAMP)
	$(BIN)/reprlab download mnist --root $(DATA)

data: $(MNIST)

demo: setup data
	$(BIN)/reprlab run -m experiment=demo model=cnn_small,cnn_small_at
	$(BIN)/reprlab run experiment=demo_cka
# issue 12: PGD-20 and AutoAttack (authors' code) side by side on the robust CNN, 50 images (~1 min idle)
	$(BIN)/reprlab run experiment=demo model=cnn_small_at attack=autoattack analysis.examples=50 analysis.eps=[0.2]

test: setup
	$(BIN)/python -m pytest

test-all: setup data
	$(BIN)/python -m pytest -m ""

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	$(BIN)/python scripts/bench_attack.py
	$(BIN)/python scripts/bench_train.py
	$(BIN)/python scripts/bench_cka.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
