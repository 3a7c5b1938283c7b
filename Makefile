# Two entry points: `make demo` (the main job) and `make test` (the suite). Each sets up its own venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test setup clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU torch wheel first, so nothing below pulls the multi-GB CUDA build.
	$(BIN)/pip install -q "torch==2.13.0"

# The library, the lab (fpmamba_lab: the `lab` extra, which `dev` includes; demo.py runs on it) and the test tools.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/python examples/demo.py

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV)
