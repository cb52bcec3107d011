# The two quick-start commands are `make serve` and `make test`; everything else is their set-up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
VENDOR := hq/web/vendor

.PHONY: serve test setup setup-test python-deps js-deps browser bench clean

serve: setup
	$(PY) -m hq serve

test: setup-test
	$(PY) -m pytest

setup: python-deps js-deps

setup-test: setup browser
	$(VENV)/bin/pip install --quiet -e '.[test]'

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip

# socket.io-client comes from the npm registry (package-lock.json) and is copied into the package,
# so that an HQ installed afterwards with `pip install .` serves it.
js-deps:
	npm ci --no-audit --no-fund --loglevel=error
	mkdir -p $(VENDOR)
	cp node_modules/socket.io-client/dist/socket.io.esm.min.js $(VENDOR)/

python-deps: $(PY) js-deps
	$(VENV)/bin/pip install --quiet -e .

# Headless Chromium for the browser tests, from Debian's packages (no browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# BENCH_ARGS, e.g. make bench BENCH_ARGS=--quick
bench: setup
	cd bench && npm ci --no-audit --no-fund --loglevel=error
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) node_modules $(VENDOR) *.egg-info
