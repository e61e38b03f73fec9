# Two commands: `make demo` and `make test`. Each creates .venv and installs on first use (idempotent:
# the stamp is rebuilt only when pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.selfsup-installed

.PHONY: ci install demo test test-slow lint typecheck imports bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -qq --upgrade pip
	$(PY) -m pip install -qq -e ".[dev,stream,onnx,tensorboard]"  # -qq: hides the local index's "is ignored" warnings
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/selfsup demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q -ra
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test-slow: $(STAMP)
	$(PY) -m pytest -q -ra -m slow

# what CI runs (.ci/run): the suite, then the README's quick start verbatim (it trains for 5 minutes)
ci: test
	$(PY) -m pytest -q -ra -m slow tests/test_ux.py::test_readme_quick_start_runs_verbatim

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

imports: $(STAMP)
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
