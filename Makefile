# Gemel: `make run` sets everything up and runs the demo; `make test` sets up and runs the checks.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
REQUIREMENTS_HASH := $(shell sha256sum requirements.txt | cut -c1-16)
STAMP := $(VENV)/.installed-$(REQUIREMENTS_HASH)
DEMO_DIR ?= var/demo
STRATEGY ?= gemel+
DEMO_SCALE ?= tiny,small
STRESS_TESTS ?= tests/webapp
STRESS_ROUNDS ?= 3

.PHONY: setup chromium test test-services test-stress lint run demo-cli bench clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -qq -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check -qq --no-deps --no-build-isolation --editable .
	rm -f $(VENV)/.installed-*
	touch $@

lint: setup
	$(PY) -m ruff check .

# The browser tests drive Debian's chromium (never a downloaded browser); as root, install it when missing.
chromium:
	@command -v chromium >/dev/null || { test "$$(id -u)" = 0 && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		{ echo "install Debian's chromium (apt-get install chromium) for the browser tests" >&2; exit 1; }

# The engine and web tests run side by side, each in a pytest process of its own (tests/suites.py): the web
# tests leave a core mostly idle, which the engine's training uses. The browser tests then run in a process of
# their own: their live stack (daphne, worker, agent) stays out of the way of the other tests' real workers.
test: setup lint chromium
	$(PY) -m tests.suites "tests/engine tests/tooling" tests/webapp
	$(PY) -m pytest tests/e2e

# The web, consumer and live-worker tests STRESS_ROUNDS times each, shuffled, in one process, while another
# process keeps every core busy: what passes here does not depend on luck or on the machine's speed.
# The shuffle's seed is printed; replay an order with PYTEST_ADDOPTS=--stress-seed=N.
test-stress: setup
	$(PY) -m pytest -p tests.stress --stress-rounds $(STRESS_ROUNDS) --stress-load $(STRESS_TESTS)

# The whole product with embedded defaults (SQLite, a private Redis): migrate, create the first operator,
# start daphne, a Celery worker and the edge agent, build the demo workload in the background.
run: setup
	$(PY) -m webapp.run --demo-scale $(DEMO_SCALE)

# The engine alone from the command line: build the tiny demo, analyse it, merge it and inspect the bundle.
demo-cli: setup
	test -f $(DEMO_DIR)/workload.json || $(PY) -m gemel_engine demo build --scale tiny --out $(DEMO_DIR)
	$(PY) -m gemel_engine analyze --workload $(DEMO_DIR)/workload.json --mode shape --top 5
	$(PY) -m gemel_engine merge --workload $(DEMO_DIR)/workload.json --out $(DEMO_DIR)/merge-$(STRATEGY) \
		--strategy $(STRATEGY)
	$(PY) -m gemel_engine inspect $(DEMO_DIR)/merge-$(STRATEGY)

# The web, integration and browser tests again on external services: DATABASE_URL (PostgreSQL) and
# GEMEL_TEST_REDIS_URL (a Redis database of its own) must be set; .ci/run sets both.
test-services: setup chromium
	test -n "$$DATABASE_URL" && test -n "$$GEMEL_TEST_REDIS_URL"
	$(PY) -m pytest tests/webapp
	$(PY) -m pytest tests/e2e

bench: setup
	$(PY) -m gemel_engine bench analyze
	$(PY) -m gemel_engine bench merge
	$(PY) -m webapp.loadbench

clean:
	rm -rf var bench-results .pytest_cache .ruff_cache
