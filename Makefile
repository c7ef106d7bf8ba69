# The two commands: `make demo` and `make test`. Each sets up what it needs by itself.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
BASE   := $(VENV)/.stamp-base
FULL   := $(VENV)/.stamp-test
PYTEST_ARGS ?=

.PHONY: demo test bench venv rabbitmq pcscd clean help

help:
	@echo "make demo    run the embedded demo (no external services)"
	@echo "make test    run the whole test suite (starts or installs RabbitMQ and pcscd+vpcd)"
	@echo "make bench   the benchmarks with their baselines, into $(BENCH_OUT)/ (about an hour; idle machine)"
	@echo "make venv    create $(VENV) and install the project with its test, card and bench extras"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The demo needs the project only.
$(BASE): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	@touch $@

# Tests need the test tools and pyscard, whose source build needs what ensure-pcscd installs.
$(FULL): pyproject.toml | $(BIN)/python
	@.ci/ensure-pcscd
	$(BIN)/pip install -q -e '.[test,card,bench]'
	@touch $@ $(BASE)

venv: $(FULL)

rabbitmq:
	@.ci/ensure-rabbitmq

pcscd:
	@.ci/ensure-pcscd

demo: $(BASE)
	$(BIN)/eeszt-gw demo

test: $(FULL) rabbitmq pcscd
	$(BIN)/python -m pytest $(PYTEST_ARGS)

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

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
