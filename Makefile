# Two commands do all set-up: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
MODEL ?=
PYTEST_ARGS ?=

.PHONY: run test bench clean

$(VENV)/.core: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -e .
	touch $@

# torch goes in first, pinned, so nothing pulls the multi-GB CUDA build.
$(VENV)/.test: $(VENV)/.core
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[test]'
	touch $@

run: $(VENV)/.core
	$(VENV)/bin/omniagent run $(if $(MODEL),--model $(MODEL),)

test: $(VENV)/.test
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(VENV)/.test
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache
