# vaultproxy developer entry points. Both targets are idempotent.
#   make demo   set up .venv, create a demo home (./demo-home) and run the proxy on 127.0.0.1:3203
#   make test   set up .venv, then ruff + mypy + the whole test suite
PYTHON ?= python3.12
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   := demo-home

.PHONY: demo test lint venv clean

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 12), "vaultproxy needs Python >= 3.12 (pyenv: pyenv install 3.12)"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	@sh scripts/demo.sh $(DEMO)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) $(DEMO)
