# Two commands do all set-up on a fresh machine: `make bench` and `make test`.
# Both create .venv and install hardneg with its dev extras; pip resolves torch and
# torchvision together (never pre-install another torch: a torchvision wheel only loads
# with its exact torch build).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv bench bench-full bench-quick test test-fast lint perf clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP)

bench: $(STAMP)
	$(BIN)/hardneg bench --preset compositional --out runs/compositional

bench-full: $(STAMP)
	$(BIN)/hardneg bench --preset compositional-full --out runs/compositional-full

bench-quick: $(STAMP)
	$(BIN)/hardneg bench --preset quick --out runs/quick

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/python -m pytest -q -ra

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples

perf: $(STAMP)
	$(BIN)/python benchmarks/bench_losses.py
	$(BIN)/python benchmarks/bench_retrieval.py
	$(BIN)/python benchmarks/bench_steps.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
