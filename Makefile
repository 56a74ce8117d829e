# Every target creates (or reuses) .venv: torch is pinned and installed first so that the
# package's own `torch>=2.1` requirement is already satisfied and no CUDA build is pulled.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[dev,tensorboard]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/slimtrain demo

test: $(STAMP) lint
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy src/slimtrain

bench: $(STAMP)
	@# results_over_seeds.py (3 seeds of two experiments, ~15 min) is run by hand
	@for b in $(filter-out benchmarks/results_over_seeds.py,$(wildcard benchmarks/*.py)); do \
		echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
