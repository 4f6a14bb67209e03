# Two commands on a fresh clone:  `make demo` (train the tiny demo model on CPU) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test journey install

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

build/sample/train: $(VENV)/.installed data/sample/train.jsonl.zst
	$(PY) -m tfrecords_tools.create_tfrecords --input_dir data/sample/train.jsonl.zst \
		--output_dir build/sample/train --name sample --chunk_size 128 --files_per 500
	$(PY) -m tfrecords_tools.create_tfrecords --input_dir data/sample/val.jsonl.zst \
		--output_dir build/sample/val --name sample --chunk_size 128 --files_per 500

demo: build/sample/train
	$(PY) main.py --model configs/demo_cpu.json --steps_per_checkpoint 100

# Installs need the network; the tests run without it (tests/isolated.sh: loopback only).
test: $(VENV)/.installed
	tests/isolated.sh $(PY) -m pytest -q -n 2 tests

# The whole user-journey matrix (every config x data kind x printed layout x mode; tests/test_journey.py),
# about an hour on 2 cores; its table goes to build/journey_table.md.
journey: $(VENV)/.installed
	tests/isolated.sh $(PY) -m pytest -q -m journey tests/test_journey.py
