# Set-up is part of every target: a local virtual environment in .venv, created and filled once
# (again only when pyproject.toml changes). CI runs `bash .ci/run`, which calls `make test`.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
TORCH := torch==2.14.1 torchvision==0.29.1 torchaudio==2.11.0

.PHONY: demo test lint bench-cpu

$(INSTALLED): pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --disable-pip-version-check $(TORCH)
	$(PYTHON) -m pip install -q --disable-pip-version-check -e ".[dev,all]"
	touch $(INSTALLED)

# The main job on its embedded default, from scratch each time (the previous demo run is replaced).
demo: $(INSTALLED)
	rm -rf runs/demo
	$(VENV)/bin/mambakit train genomics --out runs/demo

test: $(INSTALLED)
	$(PYTHON) -m pytest -q

lint: $(INSTALLED)
	$(VENV)/bin/ruff check mambakit apps tests bench

bench-cpu: $(INSTALLED)
	$(PYTHON) bench/cpu_scan.py
