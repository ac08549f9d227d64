# Gemel: `make run` sets everything up and runs the demo; `make test` sets up and runs the checks.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
REQUIREMENTS_HASH := $(shell sha256sum requirements.txt | cut -c1-16)
STAMP := $(VENV)/.installed-$(REQUIREMENTS_HASH)
DEMO_DIR ?= var/demo
DEMO_MODELS := --model cam1_people=resnet18:2 --model cam1_vehicles=resnet50:2 \
	--model cam2_people=resnet50:2 --model cam2_detect=fasterrcnn_resnet50_fpn:6 \
	--model cam3_bikes=mobilenet_v3_large:2 --model cam3_count=vgg16:5

.PHONY: setup test lint run bench clean

setup: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	rm -f $(VENV)/.installed-*
	touch $@

lint: setup
	$(PY) -m ruff check .

test: setup lint
	$(PY) -m pytest

# The most complete job the project runs today: analyse the demo workload, share every shareable
# layer, write the merged bundle and inspect it.
run: setup
	mkdir -p $(DEMO_DIR)
	$(PY) -m gemel_engine analyze $(DEMO_MODELS) --mode shape --plan-out $(DEMO_DIR)/plan.json
	$(PY) -m gemel_engine merge-apply $(DEMO_MODELS) --plan $(DEMO_DIR)/plan.json --out $(DEMO_DIR)/bundle --overwrite
	$(PY) -m gemel_engine inspect $(DEMO_DIR)/bundle

bench: setup
	$(PY) -m gemel_engine bench analyze

clean:
	rm -rf var bench-results .pytest_cache .ruff_cache
