# Two commands matter: `make demo` and `make test`. Both install what they need first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA_ROOT ?= .local
SCALE ?= 0.01
SEED ?= 42
# The Databricks CLI whose `bundle validate` tests/test_bundle.py runs: pinned here only,
# built from source once per machine into the cache the Delta jars use (needs Go).
DATABRICKS_CLI_VERSION := 0.298.0
CACHE_ROOT := $(or $(ORDER_PIPELINE_JAR_CACHE),$(HOME)/.cache/order-pipeline)
DATABRICKS_CLI := $(CACHE_ROOT)/databricks-cli-$(DATABRICKS_CLI_VERSION)/databricks

.PHONY: setup browser demo test lint format bench clean help

help:
	@echo "make demo   generate synthetic data, run the whole workflow locally, print the report"
	@echo "make test   run the test suite (local Spark + Delta)"
	@echo "make bench  run the benchmarks (SCALE=1 for SF1)"
	@echo "make lint   ruff check and format check"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[local,dev,bench]"
	touch $@

setup: $(VENV)/.installed $(DATABRICKS_CLI)
	$(BIN)/order-pipeline setup

$(DATABRICKS_CLI):
	tools/build_databricks_cli.sh $(DATABRICKS_CLI_VERSION) $@

# Debian's chromium and chromium-driver, for the HTML report's browser test: apt-get, only
# when missing (tools/install_chromium.sh says why when it cannot, and the test skips)
browser:
	@tools/install_chromium.sh

demo: setup
	$(BIN)/order-pipeline demo --data-root $(DATA_ROOT) --scale $(SCALE) --seed $(SEED)

# Two worker processes, each with its one session-scoped Spark: most of a test's time is
# Delta's fixed cost per commit, which two workers overlap on two cores. Files stay whole
# on one worker (their module-scoped pipeline runs are shared by their tests).
TEST_WORKERS ?= 2
test: setup browser
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: setup
	$(BIN)/python -m benchmarks.run --scale $(SCALE)

clean:
	rm -rf $(DATA_ROOT) .pytest_cache .ruff_cache
