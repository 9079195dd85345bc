# mdakit: `make demo` sets everything up and runs the main job; `make test` sets up and runs the tests.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
MDAKIT := $(VENV)/bin/mdakit
STAMP := $(VENV)/.mdakit-installed
QUIET_PIP := { grep -v '^WARNING: Location' || true; }

.PHONY: setup data demo lint browser test test-all zoo bench clean-demo

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>&1 | $(QUIET_PIP)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1 2>&1 | $(QUIET_PIP)
	$(PY) -m pip install -q -e '.[dev]' 2>&1 | $(QUIET_PIP)
	$(PY) -c "import mdakit, torch, torchvision"
	touch $@

setup: $(STAMP)

data: setup
	$(MDAKIT) data fetch mnist fashion-mnist

demo: data
	bash scripts/demo.sh

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

# Headless Chromium for tests/test_report_browser.py (Debian package `chromium`). Installed when missing and
# we are root or have passwordless sudo; otherwise says why, and that test is skipped. Never fails `make test`.
APT_CHROMIUM := env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium
browser:
	@if command -v chromium >/dev/null 2>&1; then echo "browser: using $$(command -v chromium)"; exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=""; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	else echo "browser: chromium is missing and installing it needs root or passwordless sudo;" \
	  "the browser test will be skipped"; exit 0; fi; \
	if $$SUDO $(APT_CHROMIUM) >/dev/null || { $$SUDO apt-get update -q >/dev/null && \
	  $$SUDO $(APT_CHROMIUM) >/dev/null; }; then echo "browser: installed chromium"; \
	else echo "browser: apt-get could not install chromium; the browser test will be skipped"; fi

test: data lint browser
	$(PY) -m pytest -m "not slow" -q

test-all: data
	$(PY) -m pytest -q

# Train the zoo models and record their accuracies (long: see benchmarks/RESULTS.md).
zoo: data
	$(PY) benchmarks/zoo_training.py

# The benchmark suite (benchmarks/suite.py): PROFILE=quick (LeNet-5, minutes) or full (all four architectures).
PROFILE ?= quick
bench: data
	$(PY) benchmarks/suite.py --profile $(PROFILE)

clean-demo:
	rm -rf runs/demo
