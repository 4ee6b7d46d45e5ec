# Two commands from a fresh clone:  `make run` (the benchmark) and `make test` (the test suite);
# `make docs` builds the HTML documentation into docs/_build/html (warnings are errors).
# Each creates .venv on first use. torch is pinned before the project so pip takes the
# CPU build that lies on disk instead of a multi-GB CUDA build.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0

.PHONY: install run test docs clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

run: install
	$(PY) benchmarks/run.py $(ARGS)

test: install
	$(PY) -m pytest -q $(ARGS)

docs: install
	$(PY) -m sphinx -b html -W --keep-going -q docs docs/_build/html
	@echo "docs/_build/html/index.html"

clean:
	rm -rf $(VENV) benchmarks/results/* docs/_build docs/generated
