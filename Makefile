# reprlab — `make demo` and `make test` do all set-up on a fresh clone (venv, install, data).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA   := $(or $(REPRLAB_DATA),outputs/data)
MNIST  := $(DATA)/MNIST/raw/t10k-labels-idx1-ubyte
FASHION := $(DATA)/FashionMNIST/raw/t10k-labels-idx1-ubyte
# Test processes (pytest-xdist), each with one torch thread: on 2 cores, twice the speed of one.
TEST_WORKERS ?= 2
PYTEST := OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n $(TEST_WORKERS)
# The findings study's steps (conf/experiment/findings_*.yaml), in order; the report comes last.
FINDINGS := findings_train findings_evaluate findings_cka findings_cka_epochs findings_stitching \
            findings_stitching_cross findings_stir findings_inversion findings_vulnerability

.PHONY: help setup data demo findings test test-all test-slurm slurm-stop lint bench docs wheels gpu-check clean

help:
	@echo "make demo      set up, then train a standard and a robust MNIST CNN, evaluate, compare (CKA)"
	@echo "make findings  each seed paper's headline finding on CPU-sized networks (docs/findings.md)"
	@echo "make test      set up, then run the fast test suite"
	@echo "make test-all  also the slow and GPU tests"
	@echo "make test-slurm  start a one-node SLURM cluster (root; Debian's slurm-wlm) and run the SLURM tests"
	@echo "make lint      ruff check + format check"
	@echo "make bench     the speed benchmarks in scripts/"
	@echo "make docs      regenerate docs/reference.md from the configs"
	@echo "make wheels    download the wheels gpu-check installs on a GPU machine without PyPI"
	@echo "make gpu-check on a CUDA machine: GPU tests, benchmarks, a paper experiment -> one JSON"

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,cluster,loggers,browser]'
	touch $@

setup: $(STAMP)

$(MNIST): | $(STAMP)
	$(BIN)/reprlab download mnist --root $(DATA)

data: $(MNIST)

$(FASHION): | $(STAMP)
	$(BIN)/reprlab download fashion_mnist --root $(DATA)

DEMO_START := $(shell date +%s)
demo: setup data
	$(BIN)/reprlab run -m experiment=demo model=cnn_small,cnn_small_at
	$(BIN)/reprlab run experiment=demo_cka
# PGD-20 and AutoAttack (authors' code) side by side on the robust CNN, 30 images (~50 s idle)
	$(BIN)/reprlab run experiment=demo model=cnn_small_at attack=autoattack analysis.examples=30 analysis.eps=[0.2]
	$(BIN)/reprlab run experiment=vulnerability_demo analysis.train_examples=1000 analysis.critic_epochs=2 analysis.search_steps=3
# STIR in Table 1's form: two seeds of the standard and of the robust CNN (the seed-1 twins train here)
	$(BIN)/reprlab run experiment=stir_demo analysis.examples=100 analysis.steps=200 analysis.repeats=2
	$(BIN)/reprlab run -m experiment=stitching_demo pair=demo_std_rob,demo_rob_std analysis.examples=300
	$(BIN)/reprlab run experiment=inversion_demo \
	  analysis.inversion.examples=20 analysis.inversion.steps=300 analysis.inversion.ood_examples=10 \
	  analysis.repr_distance.pairs=20 analysis.repr_distance.steps=50 analysis.repr_distance.eps=[1,2,4,8] \
	  analysis.repr_distance.show_eps=[2,8] analysis.features.count=2 analysis.features.pool=500 \
	  analysis.feature_vis.regularise=false analysis.feature_manip.images=10 analysis.interpolation.pairs=2 \
	  analysis.interpolation.steps=300
	@echo ""
	@echo "make demo: $$(( $$(date +%s) - $(DEMO_START) )) s (set-up included)."
	@echo "These are 4-tap MNIST CNNs. Each paper's headline finding, pre-registered and measured on"
	@echo "12-tap ResNets: docs/findings.md (design, criteria, results); run it with \`make findings\`"
	@echo "(its time is in docs/findings.md; its report: outputs/runs/findings/report/<stamp>/findings.md)."

# Trains the study's 7 networks once (the store keeps them: a rerun trains nothing), runs every
# study, then writes outputs/runs/findings/report/<stamp>/findings.md. docs/findings.md: design,
# pre-registered criteria and measured results.
findings: setup data $(FASHION)
	@start=$$(date +%s); \
	for study in $(FINDINGS); do \
	  $(BIN)/reprlab run -m experiment=$$study || exit 1; \
	done; \
	$(BIN)/reprlab run experiment=findings_report || exit 1; \
	echo "make findings: $$(( $$(date +%s) - start )) s; report: $$(ls -d outputs/runs/findings/report/* | tail -1)/findings.md"

test: setup
	$(PYTEST)

test-all: setup data
	$(PYTEST) -m ""

test-slurm: setup
	$(BIN)/python scripts/slurm_cluster.py start
	$(BIN)/python -m pytest -m slurm -p no:cacheprovider tests/cli/test_slurm.py

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

docs:
	$(PYTHON) scripts/gen_docs.py

# The GPU machine has torch but no hydra/omegaconf/antlr4/pytest and no network: carry their
# wheels in the (ignored) outputs/wheels. antlr4-python3-runtime 4.9.3 is an sdist: built here.
WHEELS := outputs/wheels
wheels: setup
	$(BIN)/python -m pip download --quiet -c constraints.txt --no-deps --only-binary=:all: \
	  --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 \
	  -d $(WHEELS) hydra-core omegaconf pyyaml pytest pluggy iniconfig packaging pygments
	$(BIN)/python -m pip wheel --quiet -c constraints.txt --no-deps -w $(WHEELS) \
	  antlr4-python3-runtime

# Runs with whatever python has torch (a GPU machine's own, or the venv): no `setup` here.
GPU_PYTHON ?= $(shell [ -x $(BIN)/python ] && echo $(BIN)/python || echo python3)
gpu-check:
	$(GPU_PYTHON) scripts/gpu_check.py --out outputs/gpu_check.json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
