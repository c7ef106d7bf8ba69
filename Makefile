# The two commands: `make demo` and `make test`. Each sets up what it needs by itself.
# Every install is constrained to the tested versions in constraints.txt (`make lock`).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
BASE   := $(VENV)/.stamp-base
FULL   := $(VENV)/.stamp-test
UNIT   := $(VENV)/.stamp-unit
PYTEST_ARGS ?=
PIP_C  := -c constraints.txt
# the unit tests: no services, no root (see test-unit)
UNIT_MARKERS := not integration and not rabbitmq and not pcsc

.PHONY: demo test test-unit bench lock venv rabbitmq pcscd cluster-up cluster-down clean help

help:
	@echo "make demo       run the embedded demo (no external services)"
	@echo "make test       run the whole test suite (starts or installs RabbitMQ and pcscd+vpcd)"
	@echo "make test-unit  the unit tests and the in-memory contract tests: no RabbitMQ, no pcscd, no root"
	@echo "make bench      the benchmarks with their baselines, into $(BENCH_OUT)/ (about an hour; idle machine)"
	@echo "make lock       rewrite constraints.txt: every dependency pinned to the version in $(VENV)"
	@echo "make venv       create $(VENV) and install the project with its test, card and bench extras"
	@echo "make cluster-up    start a local three-node RabbitMQ cluster on loopback (state in $(CLUSTER_DIR)/)"
	@echo "make cluster-down  stop the nodes that cluster-up started"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The demo needs the project only.
$(BASE): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q $(PIP_C) -e .
	@touch $@

# Tests need the test tools and pyscard, whose source build needs what ensure-pcscd installs.
$(FULL): pyproject.toml constraints.txt | $(BIN)/python
	@.ci/ensure-pcscd
	$(BIN)/pip install -q $(PIP_C) -e '.[test,card,bench]'
	@touch $@ $(BASE)

venv: $(FULL)

rabbitmq:
	@.ci/ensure-rabbitmq

pcscd:
	@.ci/ensure-pcscd

# A local three-node RabbitMQ cluster (tests/cluster.py): its own nodes, ports and cookie on
# loopback, never the main node on 5672. `cluster-up` prints the three URLs and leaves the nodes
# running (says so when they already are); `cluster-down` stops the nodes recorded in CLUSTER_DIR.
CLUSTER_DIR ?= var/cluster

cluster-up: $(FULL) rabbitmq
	$(BIN)/python -m tests.cluster up --dir $(CLUSTER_DIR)

cluster-down:
	$(BIN)/python -m tests.cluster down --dir $(CLUSTER_DIR)

demo: $(BASE)
	$(BIN)/eeszt-gw demo

test: $(FULL) rabbitmq pcscd
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The unit tests, and the contract tests' in-memory cases, without root or services: the same
# venv as `make test`, but neither RabbitMQ nor pcscd is started or installed, and the tests that
# need one carry a marker and are deselected (the embedded contract cases start the simulator
# themselves, on a free loopback port). pyscard's source build still needs pcscd's headers:
# where they are missing, run `make venv` once as root.
$(UNIT): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q $(PIP_C) -e '.[test,card,bench]'
	@touch $@ $(BASE)

test-unit: $(UNIT)
	$(BIN)/python -m pytest tests/unit tests/contract -m "$(UNIT_MARKERS)" $(PYTEST_ARGS)

# constraints.txt from what $(VENV) has installed; after `$(BIN)/pip install -U NAME`, run this
# and the tests, and commit both.
lock: $(FULL)
	$(BIN)/python .ci/lock > constraints.txt.new
	mv constraints.txt.new constraints.txt

# The benchmarks: each prints its table and writes JSON + PNG into $(BENCH_OUT).
# Sizes: BENCH_N events per batch run, BENCH_REPEAT interleaved runs (the median is reported),
# BENCH_SCALING_N per scaling run, BENCH_MEMORY_N for the RSS run (1,000,000: about 40 minutes).
BENCH_OUT      ?= bench-results
BENCH_N        ?= 10000
BENCH_REPEAT   ?= 3
BENCH_SCALING_N ?= 20000
BENCH_MEMORY_N ?= 1000000

bench: $(FULL) rabbitmq
	@mkdir -p $(BENCH_OUT)
	$(BIN)/eeszt-gw bench publish --json $(BENCH_OUT)/publish.json --png $(BENCH_OUT)/publish.png
	$(BIN)/eeszt-gw bench batch --n $(BENCH_N) --repeat $(BENCH_REPEAT) --latencies 0,20,100 \
		--json $(BENCH_OUT)/batch.json --png $(BENCH_OUT)/batch.png
	$(BIN)/eeszt-gw bench codepath --json $(BENCH_OUT)/codepath.json --png $(BENCH_OUT)/codepath.png
	$(BIN)/eeszt-gw bench scaling --n $(BENCH_SCALING_N) --processes 1,2,4 \
		--json $(BENCH_OUT)/scaling.json --png $(BENCH_OUT)/scaling.png
	$(BIN)/eeszt-gw bench memory --n $(BENCH_MEMORY_N) \
		--json $(BENCH_OUT)/memory.json --png $(BENCH_OUT)/memory.png
	$(BIN)/eeszt-gw bench cluster --json $(BENCH_OUT)/cluster.json

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
