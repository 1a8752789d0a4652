# Forgeline's two commands for a fresh machine: `make demo` and `make test`.
# Everything they need (virtualenv, packages, Kafka jars, redis-server, the S3 endpoint)
# is installed or started on first use.

SHELL  := /bin/bash
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: install test unit integration demo up down reset status topics schema clean

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found. Install Python 3.11 (e.g. apt-get install python3.11 python3.11-venv) or run: make PYTHON=/path/to/python3.11"; exit 1; }
	@echo "==> creating $(VENV) and installing forgeline with its test extras"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --progress-bar on -e '.[test]'
	@touch $@

install: $(VENV)/.installed

# pytest exits 5 when it collected no tests: that is a broken suite, not a pass.
test: install
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests"; exit 1; fi; exit $$rc

unit: install
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

integration: install
	$(BIN)/python -m pytest tests/integration tests/e2e $(PYTEST_ARGS)

# Topics are made on the stack `dev up` started (its ports, its broker count and replication).
demo: install
	$(BIN)/forgeline dev up
	eval "$$($(BIN)/forgeline dev env)" && $(BIN)/forgeline topics create
	$(BIN)/forgeline demo
	@echo "Dashboard: http://127.0.0.1:$${FORGELINE_DEV_INGEST_PORT:-18080}/dashboard"
	@echo "The stack is still running: 'make status' shows it, 'make down' stops it."

up: install
	$(BIN)/forgeline dev up

reset: install
	$(BIN)/forgeline dev reset

down: install
	$(BIN)/forgeline dev down

status: install
	$(BIN)/forgeline dev status

topics: install
	eval "$$($(BIN)/forgeline dev env)" && $(BIN)/forgeline topics create

schema: install
	$(BIN)/forgeline schema --out schemas-out

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info schemas-out
