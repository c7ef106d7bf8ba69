# The two commands: `make demo` and `make test`. Each sets up what it needs by itself.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: demo test venv rabbitmq simulator clean help

help:
	@echo "make demo    run the embedded demo (no external services)"
	@echo "make test    run the whole test suite (starts or installs RabbitMQ as needed)"
	@echo "make venv    create $(VENV) and install the project"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

rabbitmq:
	@.ci/ensure-rabbitmq

demo: venv
	$(BIN)/eeszt-gw demo

test: venv rabbitmq
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
