# One command per job. `make demo` and `make test` set everything up on a fresh machine first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH_CPU ?= torch==2.13.0

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.installed

# torch first, pinned to the CPU build on local disk, and only where no torch is importable
# (Colab/Kaggle already have one; an unpinned torch would pull a multi-GB CUDA build here).
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_CPU)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/kops demo

test: setup
	$(BIN)/ruff check kaggleops tests bench examples datasets
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -n auto --dist loadfile

bench: setup
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
