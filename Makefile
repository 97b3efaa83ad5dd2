# Two entry points: `make demo` (set up, then run the demo on the embedded defaults) and
# `make test` (set up, then run the test suite). Both create ./.venv on first use.
PYTHON ?= python3
VENV ?= .venv
# torch/torchvision pair known to work here (x86_64, Python 3.11); override for other platforms,
# e.g. `make test TORCH="torch==2.9.1 torchvision==0.24.1"`.
TORCH ?= torch==2.14.1 torchvision==0.29.1

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip
	$(VENV)/bin/pip install $(TORCH)
	$(VENV)/bin/pip install -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/cpcsam demo --output demo_output

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest

.PHONY: setup demo test
