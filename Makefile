# moda-hub: every target sets itself up from nothing (virtualenv, packages). Text-to-speech
# (espeakng-loader) and video I/O (PyAV) come as wheels: no system packages, except chromium
# for the browser tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
TRAIN_STAMP := $(VENV)/.installed-train
export GRADIO_ANALYTICS_ENABLED := False
export HF_HUB_DISABLE_TELEMETRY := 1
export HF_HUB_OFFLINE := 1

.PHONY: demo test app train evaluate bench setup system-deps clean

setup: $(STAMP)

# chromium for the browser tests (tests/test_browser.py); nothing else comes from apt.
system-deps:
	@if ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "browser tests need chromium (apt-get install chromium); they will be skipped" >&2; fi; fi

$(STAMP): requirements.txt constraints.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -r requirements.txt
	$(PY) -m pip install -q -c constraints.txt --no-deps --no-build-isolation -e .
	@touch $@

# training packages (requirements-train.txt = the Space's + moda-hub[train])
$(TRAIN_STAMP): $(STAMP) requirements-train.txt
	$(PY) -m pip install -q -c constraints.txt -r requirements-train.txt
	@touch $@

# test-only packages (requirements-test.txt = the Space's + moda-hub[test])
$(TEST_STAMP): $(STAMP) requirements-test.txt
	$(PY) -m pip install -q -c constraints.txt -r requirements-test.txt
	@touch $@

# A talking video from the bundled examples with the shipped weights -> outputs/demo.mp4
demo: $(STAMP)
	$(PY) -m moda_hub.cli generate --image examples/portrait.png --audio examples/speech.wav \
	  --seed 0 --out outputs/demo.mp4 --landmarks outputs/demo_landmarks.npz

test: $(TEST_STAMP) system-deps
	$(PY) -m pytest -q tests

app: $(STAMP)
	$(PY) app.py

# Rebuild pretrained/moda-base: real footage from ../shared/train (prepared once, cached in runs/moda-base/real)
# + synthetic corpus + both stages; the audio_encoder is kept (scripts/convert_whisper_encoder.py makes it). <= 60 min on 2 cores.
train: $(TRAIN_STAMP)
	$(PY) scripts/build_moda_base.py --out pretrained/moda-base

evaluate: $(STAMP)
	$(PY) -m moda_hub.cli evaluate --model pretrained/moda-base --out outputs/eval.json

bench: $(TEST_STAMP)
	$(PY) benchmarks/bench_speed.py

clean:
	rm -rf outputs .pytest_cache
