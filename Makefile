# Set-up is part of every target: a local virtual environment in .venv, created and filled once
# (again only when pyproject.toml changes). CI runs `bash .ci/run`, which calls `make test`.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
TORCH := torch==2.14.1 torchvision==0.29.1 torchaudio==2.11.0

# One compute thread per process in tests (tests/conftest.py says why); the variables reach every subprocess.
TEST_ENV := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

.PHONY: demo test test-fast lint bench-cpu

$(INSTALLED): pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --disable-pip-version-check $(TORCH)
	$(PYTHON) -m pip install -q --disable-pip-version-check -e ".[dev,all]"
	touch $(INSTALLED)

# The main job on its embedded default, from scratch each time (the previous demo run is replaced).
demo: $(INSTALLED)
	rm -rf runs/demo
	$(VENV)/bin/mambakit train genomics --out runs/demo

# Everything, the `slow` tests included (CI runs this); `make test-fast` leaves the slow ones out while you work.
# Tests run in one process per core (pytest-xdist; at most 4: each test may start processes of its own), which
# halves the suite's time on CI's two cores.
TEST_PROCESSES := -n auto --maxprocesses 4
test: $(INSTALLED)
	$(TEST_ENV) $(PYTHON) -m pytest -q $(TEST_PROCESSES) --durations=10

test-fast: $(INSTALLED)
	$(TEST_ENV) $(PYTHON) -m pytest -q $(TEST_PROCESSES) -m "not slow"

# ruff (RUF100 flags noqa comments that silence nothing), ruff's formatter, and mypy on the typed core.
lint: $(INSTALLED)
	$(VENV)/bin/ruff check mambakit apps tests bench
	$(VENV)/bin/ruff format --check mambakit apps tests bench
	$(VENV)/bin/mypy mambakit/ops mambakit/nn mambakit/models mambakit/domains.py mambakit/errors.py mambakit/jsonfiles.py \
		mambakit/predictions.py mambakit/cli_support.py mambakit/splits.py mambakit/labelled_files.py mambakit/hf_dumps.py

bench-cpu: $(INSTALLED)
	$(PYTHON) bench/cpu_scan.py
