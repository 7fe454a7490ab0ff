# Two commands do the whole set-up on a fresh machine: `make demo` and `make test`.
# The virtual environment is rebuilt only when pyproject.toml or constraints.txt change.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PIP    := $(PY) -m pip install --disable-pip-version-check -q -c constraints.txt
export OMP_NUM_THREADS ?= 2

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev]'
	touch $(STAMP)

demo: install
	$(VENV)/bin/slimkit demo

lint: install
	$(VENV)/bin/ruff check src tests bench

test: lint
	$(PY) -m pytest -q -m "not slow"

bench: install chromium
	$(PY) -m pytest -q -m slow
	$(PY) -m bench

clean:
	rm -rf $(VENV) slimkit-demo .pytest_cache .ruff_cache

# Headless Chromium for the report screenshot test (tests/search, slow): apt only if it is missing.
.PHONY: chromium
chromium:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium)
