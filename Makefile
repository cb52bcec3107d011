# The two quick-start commands are `make serve` and `make test`; everything else is their set-up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
VENDOR := hq/web/vendor

.PHONY: serve test test-fast setup setup-test python-deps js-deps vendor browser bench clean

serve: setup
	$(PY) -m hq serve

# Tests run on TEST_WORKERS xdist workers, a whole file per worker (--dist loadfile: modules share
# one server and some tests read what an earlier one in the file left). Measured on 2 vCPUs under
# other load: 229 tests took 60 s on 2 workers and 58 s on 4, which cost a third more CPU and made
# the timing-sensitive cluster tests flakier. Coverage of hq and agent_client is reported at the
# end (in CI's output).
TEST_WORKERS ?= 3
PYTEST_PARALLEL := -n $(TEST_WORKERS) --dist loadfile

test: setup-test
	$(PY) -m pytest $(PYTEST_PARALLEL) --cov=hq --cov=agent_client --cov-report=term

# The inner loop: no browser, multi-node/outage/worker, packaging or soak tests, no coverage.
test-fast:
	$(PY) -m pytest $(PYTEST_PARALLEL) -m "not browser and not cluster and not packaging and not soak"

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
