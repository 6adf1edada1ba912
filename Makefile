# Everything a fresh machine needs is installed by these targets themselves.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## demo: backtest the recorded scenarios in replay_data/ and print what was found
demo: $(STAMP)
	$(VENV)/bin/anomaly-detector backtest replay_data --output out/demo --labels replay_data/labels.json

## test: the whole test suite (unit, doctests, calibration contract)
test: $(STAMP)
	$(PY) -m pytest

## bench: NAB scores with baselines, and scoring throughput (prints figures)
bench: $(STAMP)
	$(PY) benchmarks/nab.py
	$(PY) benchmarks/throughput.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy detector models service
