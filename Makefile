# Two commands on a fresh clone:  `make demo` (train the tiny demo model on CPU, sample from it, plot its
# loss) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test journey install

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# The demo needs TensorFlow's CPU build and matplotlib; the tests add their own stack (torch, transformers, ...).
$(VENV)/.demo-installed: setup.py | $(PY)
	$(PY) -m pip install --quiet -e ".[cpu,plot]"
	touch $@

$(VENV)/.test-installed: setup.py | $(PY)
	$(PY) -m pip install --quiet -e ".[cpu,test]"
	touch $@

install: $(VENV)/.test-installed

build/sample/train: $(VENV)/.demo-installed data/sample/train.jsonl.zst
	$(VENV)/bin/gpt-neo-create-tfrecords --input data/sample/train.jsonl.zst \
		--output_dir build/sample/train --name sample --chunk_size 128 --files_per 500
	$(VENV)/bin/gpt-neo-create-tfrecords --input data/sample/val.jsonl.zst \
		--output_dir build/sample/val --name sample --chunk_size 128 --files_per 500

demo: build/sample/train
	$(PY) main.py --model configs/demo_cpu.json --steps_per_checkpoint 100
	$(PY) main.py --model configs/demo_cpu.json --predict --prompt data/sample/prompts.jsonl --max_new_tokens 30 \
		--temperature 0.7
	$(VENV)/bin/gpt-neo-loss-plot --model_path build/demo_model --output build/demo_model/loss.png

# Installs need the network; the tests run without it (tests/isolated.sh: loopback only), in two workers.
test: $(VENV)/.test-installed
	tests/isolated.sh $(PY) -m pytest -q -n 2 tests

# The whole user-journey matrix (every config x data kind x printed layout x mode; tests/test_journey.py),
# about an hour on 2 cores; its table goes to build/journey_table.md.
journey: $(VENV)/.test-installed
	tests/isolated.sh $(PY) -m pytest -q -m journey tests/test_journey.py
