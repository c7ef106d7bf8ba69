# The two commands: `make demo` and `make test`. Each sets up what it needs by itself.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
BASE   := $(VENV)/.stamp-base
FULL   := $(VENV)/.stamp-test
PYTEST_ARGS ?=

.PHONY: demo test venv rabbitmq pcscd clean help

help:
	@echo "make demo    run the embedded demo (no external services)"
	@echo "make test    run the whole test suite (starts or installs RabbitMQ and pcscd+vpcd)"
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

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
