# Quick start:  make train   (set-up + a short real MNIST run)   |   make test   (set-up + tests)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DDPM_DATA_DIR ?= data
export DDPM_DATA_DIR

.PHONY: venv train test test-fast lint clean

$(BIN)/ddpm-train: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.14.1" "torchvision==0.29.1" || $(BIN)/pip install -q torch torchvision
	$(BIN)/pip install -q -e ".[dev,launchers,bench,dashboard]"
	touch $@

venv: $(BIN)/ddpm-train

train: venv
	$(BIN)/ddpm-train experiment=quickstart hydra.run.dir=outputs/quickstart

# One test file per core at a time, one thread each: the tests' networks are tiny and barely gain
# from a second thread (pytest-xdist; plain `pytest` runs them one after the other).
PYTEST := OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -ra -n auto --dist loadfile

test: venv
	$(PYTEST) --durations=15

test-fast: venv
	$(PYTEST) -m "not slow"

lint: venv
	$(BIN)/ruff check ddpm tests scripts
	$(BIN)/ruff format --check ddpm tests scripts

clean:
	rm -rf $(VENV) outputs .pytest_cache
