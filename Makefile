# reprlab — `make demo` and `make test` do all set-up on a fresh clone (venv, install, data).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA   := $(or $(REPRLAB_DATA),outputs/data)
MNIST  := $(DATA)/MNIST/raw/t10k-labels-idx1-ubyte

.PHONY: help setup data demo test test-all test-slurm slurm-stop lint bench clean

help:
	@echo "make demo      set up, then train a standard and a robust MNIST CNN, evaluate, compare (CKA)"
	@echo "make test      set up, then run the fast test suite"
	@echo "make test-all  also the slow and GPU tests"
	@echo "make test-slurm  start a one-node SLURM cluster (root; Debian's slurm-wlm) and run the SLURM tests"
	@echo "make lint      ruff check + format check"
	@echo "make bench     the speed benchmarks in scripts/"

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,cluster]'
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
	$(BIN)/reprlab run experiment=vulnerability_demo analysis.train_examples=1000 analysis.critic_epochs=2 analysis.search_steps=3
	$(BIN)/reprlab run experiment=stir_demo analysis.models=null ref=cnn_small_at analysis.examples=100 analysis.repeats=2
	$(BIN)/reprlab run -m experiment=stitching_demo pair=demo_std_rob,demo_rob_std analysis.examples=300
	$(BIN)/reprlab run experiment=inversion_demo \
	  analysis.inversion.examples=20 analysis.inversion.steps=300 analysis.inversion.ood_examples=10 \
	  analysis.repr_distance.pairs=20 analysis.repr_distance.steps=50 analysis.repr_distance.eps=[1,2,4,8] \
	  analysis.repr_distance.show_eps=[2,8] analysis.features.count=2 analysis.features.pool=500 \
	  analysis.feature_vis.regularise=false analysis.feature_manip.images=10 analysis.interpolation.pairs=2 \
	  analysis.interpolation.steps=300

test: setup
	$(BIN)/python -m pytest

test-all: setup data
	$(BIN)/python -m pytest -m ""

test-slurm: setup
	$(BIN)/python scripts/slurm_cluster.py start
	$(BIN)/python -m pytest -m slurm -p no:cacheprovider tests/test_slurm.py

slurm-stop:
	$(BIN)/python scripts/slurm_cluster.py stop

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	$(BIN)/python scripts/bench_attack.py
	$(BIN)/python scripts/bench_train.py
	$(BIN)/python scripts/bench_cka.py
	$(BIN)/python scripts/bench_vulnerability.py
	$(BIN)/python scripts/bench_stitch.py
	$(BIN)/python scripts/bench_inversion.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
