# Everything a fresh machine needs is installed by these targets themselves.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo demo-check backtest-demo test test-fast bench lint

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# What the demo and the tests run, from apt when it is not on PATH; sudo only when not root:
# Prometheus (with promtool) and Alertmanager, and with $(call system_packages,browser) also chromium
# (the page tests render with it; fonts-liberation gives it fonts).  The demo and the tests start their
# own on free ports: a policy-rc.d keeps the packages' init scripts from starting the packaged services
# during the install (a machine that already has one keeps its own), and where systemd started them
# anyway they are stopped, so nothing of theirs holds 9090/9093.
define system_packages
	@set -e; missing=""; \
	{ command -v prometheus && command -v promtool; } >/dev/null || missing="prometheus"; \
	{ command -v prometheus-alertmanager || command -v alertmanager; } >/dev/null \
	    || missing="$$missing prometheus-alertmanager"; \
	$(if $(1),{ command -v chromium || command -v chromium-browser; } >/dev/null \
	    || missing="$$missing chromium fonts-liberation";) \
	if [ -n "$$missing" ]; then \
	    sudo=""; [ "$$(id -u)" -eq 0 ] || sudo="sudo"; \
	    if [ ! -e /usr/sbin/policy-rc.d ]; then \
	        printf '#!/bin/sh\nexit 101\n' | $$sudo tee /usr/sbin/policy-rc.d >/dev/null; \
	        $$sudo chmod 755 /usr/sbin/policy-rc.d; \
	        trap "$$sudo rm -f /usr/sbin/policy-rc.d" EXIT; \
	    fi; \
	    echo "installing" $$missing "(apt-get)"; \
	    $$sudo apt-get update -qq; \
	    $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	    if [ -d /run/systemd/system ]; then \
	        $$sudo systemctl stop prometheus prometheus-alertmanager prometheus-node-exporter 2>/dev/null \
	            || true; \
	    fi; \
	fi
endef

## demo: live demo: recorded incidents replayed through a real Prometheus and Alertmanager to the
## detector service; prints where to look and each alert as it arrives; Ctrl-C stops everything
demo: $(STAMP)
	$(call system_packages)
	$(PY) -m service.demo

## demo-check: the live demo unattended: exit 0 once every replayed incident has alerted in
## Alertmanager, active until its incident ends; 1 if one resolves early or it takes longer than 300 s
demo-check: $(STAMP)
	$(call system_packages)
	$(PY) -m service.demo --check

## backtest-demo: offline: backtest the recorded scenarios in replay_data/ and print what was found
backtest-demo: $(STAMP)
	$(VENV)/bin/anomaly-detector backtest replay_data --output out/demo --labels replay_data/labels.json \
	    --report out/demo/report.html

## test: the whole test suite: unit tests, doctests, the calibration contract, and the tests that run
## real Prometheus, Alertmanager, the service and chromium (installed from apt when missing)
test: $(STAMP)
	$(call system_packages,browser)
	$(PY) -m pytest

## test-fast: unit tests and doctests only (no live, browser, demo or slow tests; nothing installed
## from apt), on every core: an answer in under a minute
test-fast: $(STAMP)
	$(PY) -m pytest -m "not (live or browser or demo or slow)" -n auto

## bench: NAB scores with baselines, what an on-call team gets from a fleet, and scoring throughput
bench: $(STAMP)
	$(PY) benchmarks/nab.py
	$(PY) benchmarks/fleet.py
	$(PY) benchmarks/throughput.py
	$(PY) benchmarks/throughput.py --series 100000 --patterns
	taskset -c 0 $(PY) benchmarks/remote_write.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy detector models service
