# Two commands do all set-up: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PYTEST_ARGS ?=

.PHONY: run test bench clean demo chromium toy toy-full

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

# The main job: the shipped toy agent (assets/toy_agent: a TAURA agent of `make toy`; docs/toy.md §5)
# plays one OTA episode, greedily, on a held-out toy task: the first of assets/examples.json (tools/make_examples.py).
# MODEL=random: the tiny preset with random weights (short turns: it never stops on its own); MODEL=DIR: any checkpoint.
MODEL ?= assets/toy_agent
EXAMPLE_VIDEO := assets/test_00122.mp4
RUN_ARGS ?= $(if $(filter random,$(MODEL)),--max-steps 3 --fixed-steps --max-new-tokens 128,)

run: $(VENV)/.core
	$(VENV)/bin/omniagent run --model $(MODEL) --video $(EXAMPLE_VIDEO) \
		--question "How many beeps play while the magenta square is lit (2, 3, 4 or 5)?" --question-type NUM --answer 2 \
		$(RUN_ARGS)

# The demo's browser tests drive Debian's chromium (never `playwright install`); installed here when running as
# root and missing. Elsewhere those tests skip, saying why (.ci/run sets OMNIAGENT_BROWSER_TESTS=1: they must run).
CHROMIUM ?= /usr/bin/chromium
chromium:
	@if [ ! -x $(CHROMIUM) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		export DEBIAN_FRONTEND=noninteractive; apt-get install -y chromium || (apt-get update && apt-get install -y chromium); fi

test: $(VENV)/.test chromium
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Benchmarks run outside the test suite; each prints its baseline, ours and the ratio.
BENCHMARKS := decoder_forward towers engine media convert_memory serve episodes accelerator rl
bench: $(VENV)/.test
	set -e; for b in $(BENCHMARKS); do echo "== $$b"; $(PY) benchmarks/$$b.py; done

# The Gradio demo on http://127.0.0.1:8080 (MODEL=path for a checkpoint; DEMO_ARGS="--port 9000 --share" etc.).
DEMO_ARGS ?=
$(VENV)/.demo: $(VENV)/.core
	$(PIP) install -e '.[demo]'
	touch $@

demo: $(VENV)/.demo
	$(VENV)/bin/omniagent demo $(DEMO_ARGS) --model $(MODEL)

# The toy world end to end on a CPU (docs/toy.md §4, ≈ 58 min on 2 cores): data -> expert -> frame reading -> SFT -> TAURA
# -> eval into runs/toy, resumable per stage (rerun after a kill). TOY_ARGS="train_tasks=40 test_tasks=8" etc. overrides configs/toy/pipeline.yaml.
TOY_ARGS ?=
toy: $(VENV)/.core
	$(PY) -m omniagent_jax.toy.pipeline $(TOY_ARGS)

# `make toy`, then the GRPO ablation, three seeds per RL variant, random weights and the expert on the same test split,
# and the TAURA agent's step-budget sweep; writes the results table into benchmarks/RESULTS.md (docs/toy.md §5).
toy-full: $(VENV)/.core
	$(PY) -m omniagent_jax.toy.pipeline.full $(TOY_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
