# Two commands do everything on a fresh machine:
#   make demo   train on Scanpy's shipped PBMCs, export, label held-out cells with sccsa-infer
#   make test   run the test suite
# Both create .venv and install what they need (torch==2.13.0 first, then sccsa-infer from ./inference
# and sccsa[train,test]).

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sccsa-installed

.PHONY: demo test test-slow test-all default-model benchmarks clean browser

$(STAMP): pyproject.toml inference/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ./inference -e ".[train,test]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) models/build_default.py --out build/demo --demo

# The browser-runtime test (tests/test_web_runtime.py) needs headless Chromium, a Debian package:
# installed here when missing and run as root, else that test is skipped and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	{ if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium \
	     >/dev/null) || echo "could not install chromium: the browser test will be skipped"; \
	  else echo "chromium is not installed (apt-get install chromium): the browser test will be skipped"; fi; }

LINTED := training inference benchmarks tests models

test: $(STAMP) browser
	$(PY) -m ruff check $(LINTED)
	$(PY) -m pytest

test-slow: $(STAMP)
	$(PY) -m pytest -m "slow or bench" -rP --show-capture=stdout

test-all: $(STAMP) browser
	$(PY) -m pytest -m "slow or bench or not (slow or bench)"

default-model: $(STAMP)
	$(PY) models/build_default.py --out inference/sccsa_infer/default_model --write-table

benchmarks: $(STAMP)
	$(PY) -m pip install --quiet -e ./inference -e ".[train,test,bench]"
	$(PY) benchmarks/run_all.py

clean:
	rm -rf build .pytest_cache
