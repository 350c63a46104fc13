# The two entry points of the README: `make demo` and `make test`.
# Each creates the virtual environment on first use; nothing needs installing by hand.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) torch==2.13.0
	$(PIP) -e .
	touch $@

$(VENV)/.dev: $(VENV)/.runtime
	$(PIP) -e '.[dev]'
	# The book's own code (test oracle); its modules need only torch, numpy, matplotlib and tqdm,
	# so its notebook dependencies (tensorflow, jupyterlab, an older numpy) are left out.
	$(PIP) --no-deps llms-from-scratch==1.0.19
	touch $@

demo: $(VENV)/.runtime
	$(BIN)/scratchllm demo

lint: $(VENV)/.dev
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
