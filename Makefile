# Everything a fresh machine needs is installed by these targets themselves.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo demo-check backtest-demo test bench lint

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Prometheus (with promtool) and Alertmanager from apt when they are not on PATH; sudo only when not root.
# The demo starts its own on free ports; Debian may also start the packaged services (on :9090, :9093).
define demo_packages
	@missing=""; \
	{ command -v prometheus && command -v promtool; } >/dev/null || missing="prometheus"; \
	{ command -v prometheus-alertmanager || command -v alertmanager; } >/dev/null \
	    || missing="$$missing prometheus-alertmanager"; \
	if [ -n "$$missing" ]; then \
	    sudo=""; [ "$$(id -u)" -eq 0 ] || sudo="sudo"; \
	    echo "installing $$missing (apt-get)"; \
	    $$sudo apt-get update -qq && \
	    $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
endef

## demo: live demo: recorded incidents replayed through a real Prometheus and Alertmanager to the
## detector service; prints where to look and each alert as it arrives; Ctrl-C stops everything
demo: $(STAMP)
	$(demo_packages)
	$(PY) -m service.demo

## demo-check: the live demo unattended: exit 0 once every replayed incident has alerted in
## Alertmanager, active until its incident ends; 1 if one resolves early or it takes longer than 300 s
demo-check: $(STAMP)
	$(demo_packages)
	$(PY) -m service.demo --check

## backtest-demo: offline: backtest the recorded scenarios in replay_data/ and print what was found
backtest-demo: $(STAMP)
	$(VENV)/bin/anomaly-detector backtest replay_data --output out/demo --labels replay_data/labels.json \
	    --report out/demo/report.html

## test: the whole test suite (unit, doctests, calibration contract)
test: $(STAMP)
	$(PY) -m pytest

## bench: NAB scores with baselines, what an on-call team gets from a fleet, and scoring throughput
bench: $(STAMP)
	$(PY) benchmarks/nab.py
	$(PY) benchmarks/fleet.py
	$(PY) benchmarks/throughput.py
	taskset -c 0 $(PY) benchmarks/remote_write.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy detector models service
