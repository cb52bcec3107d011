# The two quick-start commands are `make serve` and `make test`; everything else is their set-up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
VENDOR := hq/web/vendor

.PHONY: serve test setup setup-test python-deps js-deps vendor browser bench clean

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

# socket.io-client comes from the npm registry (package-lock.json). The console's copy is committed
# in $(VENDOR), so a wheel or `pip install .` from a clean clone serves it without npm; js-deps only
# checks that the copy is still the locked version (tests/test_packaging.py checks it too).
NPM_CLIENT := node_modules/socket.io-client/dist/socket.io.esm.min.js

js-deps:
	npm ci --no-audit --no-fund --loglevel=error
	@cmp -s $(NPM_CLIENT) $(VENDOR)/socket.io.esm.min.js || { \
		echo "$(VENDOR)/socket.io.esm.min.js is not the socket.io-client in package-lock.json: run 'make vendor' and commit it" >&2; \
		exit 1; }

# After changing socket.io-client in package.json / package-lock.json: refresh the committed copy.
vendor:
	npm ci --no-audit --no-fund --loglevel=error
	mkdir -p $(VENDOR)
	cp $(NPM_CLIENT) $(VENDOR)/

python-deps: $(PY)
	$(VENV)/bin/pip install --quiet -e .

# Headless Chromium for the browser tests, from Debian's packages (no browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# BENCH_ARGS, e.g. make bench BENCH_ARGS=--quick
bench: setup
	cd bench && npm ci --no-audit --no-fund --loglevel=error
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) node_modules *.egg-info
