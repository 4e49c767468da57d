# `make check` and `make test` set up .venv first when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -c constraints.txt
STAMP := $(VENV)/.installed
MODEL ?= cnn

export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONHASHSEED ?= 0

.PHONY: install check test test-slow test-report-browser lint bench bench-memory gpu-check clean

$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(PIP) -q torch==2.13.0
	$(PIP) -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## the main job on a zoo model: port torch -> Keras through ONNX and compare all four runtimes
check: $(STAMP)
	$(BIN)/parity check $(MODEL) --from torch
	$(BIN)/parity check $(MODEL) --from tf

## two pytest workers, one per core, each framework on one thread (a test file stays on one worker,
## so the shared full checks in tests/diagnostics_cache.py are computed once per file's worker)
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

## the HTML report in a real headless browser: installs Chromium from the system packages when missing
## (Debian/Ubuntu, needs root), then runs tests/test_report.py, whose browser test is skipped without it
test-report-browser: $(STAMP)
	command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
		(apt-get update -q && apt-get install -y -q --no-install-recommends chromium)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -p no:xdist tests/test_report.py

lint: $(STAMP)
	$(BIN)/ruff check parity converters zoo tests scripts examples

bench: $(STAMP)
	$(BIN)/python scripts/bench.py

bench-memory: $(STAMP)  # peak RSS of the MiniLM check, RSS growth over 50 small checks (a few minutes)
	$(BIN)/python scripts/bench_memory.py

## no install step: a GPU machine may have no package index; the script uses .venv if present, else python3
gpu-check:  # DRY_RUN=1: the same steps on the CPU, without TensorFlow (see README, GPU evidence)
	bash scripts/gpu_check.sh $(if $(DRY_RUN),--dry-run,)

clean:
	rm -rf $(VENV) build *.egg-info
