# Gemel: `make run` sets everything up and runs the demo; `make test` sets up and runs the checks.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
REQUIREMENTS_HASH := $(shell sha256sum requirements.txt | cut -c1-16)
STAMP := $(VENV)/.installed-$(REQUIREMENTS_HASH)
DEMO_DIR ?= var/demo
STRATEGY ?= gemel+

.PHONY: setup test lint run bench clean

setup: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -qq -r requirements.txt
	rm -f $(VENV)/.installed-*
	touch $@

lint: setup
	$(PY) -m ruff check .

test: setup lint
	$(PY) -m pytest

# The most complete job the project runs today: build the tiny demo workload (synthetic cameras, trained
# unmerged models; reused when present), analyse it, run the merge search and inspect the merged bundle.
run: setup
	test -f $(DEMO_DIR)/workload.json || $(PY) -m gemel_engine demo build --scale tiny --out $(DEMO_DIR)
	$(PY) -m gemel_engine analyze --workload $(DEMO_DIR)/workload.json --mode shape --top 5
	$(PY) -m gemel_engine merge --workload $(DEMO_DIR)/workload.json --out $(DEMO_DIR)/merge-$(STRATEGY) \
		--strategy $(STRATEGY)
	$(PY) -m gemel_engine inspect $(DEMO_DIR)/merge-$(STRATEGY)

bench: setup
	$(PY) -m gemel_engine bench analyze
	$(PY) -m gemel_engine bench merge

clean:
	rm -rf var bench-results .pytest_cache .ruff_cache
