# edgesentry — `make demo` and `make test` are the whole quickstart.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-fast fuzz demo demo-recall bench bench-models lint clean
DATASETS ?= ../shared/datasets

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[hub,edge,dev]'
	touch $(STAMP)

## Full suite: unit tests plus the integration tests (real Mosquitto, amqtt, training).
## Test files run in two worker processes (pytest-xdist, --dist loadfile: a file's tests stay in one
## worker): most integration tests wait on brokers, agents and paced streams, so two workers overlap that
## waiting. TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/pytest -q $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile)

## Unit tests only.
test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not integration"

## Longer fuzzing: 20x the messages of tests/test_fuzz.py (>= 200,000 per side), random seeds.
FUZZ_SCALE ?= 20
fuzz: $(STAMP)
	FUZZ_SCALE=$(FUZZ_SCALE) $(BIN)/pytest -q -p no:logging tests/test_fuzz.py

## Whole loop on an embedded broker: hub, three agents, simulator; writes demo-summary.json.
demo: $(STAMP)
	$(BIN)/cloud-hub demo $(DEMO_ARGS)

## The demo's recall per anomaly kind offline (3 runs, no wall clock; ~7 min idle); writes demo-recall.json.
demo-recall: $(STAMP)
	$(BIN)/cloud-hub demo-recall $(RECALL_ARGS)

## Interpreter speed, agent throughput and latency through a broker, bundle sizes.
bench: $(STAMP)
	$(BIN)/cloud-hub bench $(BENCH_ARGS)

## Every model on the labelled netflow samples and NAB through the edge path; writes docs/benchmarks tables.
bench-models: $(STAMP)
	$(BIN)/cloud-hub bench-models --datasets $(DATASETS) --out bench-models $(BENCH_MODELS_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check shared edge_agent cloud_hub tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .demo .bench bench-models demo-summary.json bench-results.json
