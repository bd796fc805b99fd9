# The front door. `make demo` and `make test` each do all set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTO_DIR := protos/forsaken/v1
PROTOS := $(wildcard $(PROTO_DIR)/*.proto)

.PHONY: venv proto proto-check lint test test-fast demo bench docs clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Generated code is committed; this regenerates it in place.
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I protos --python_out=protos --pyi_out=protos \
		--grpc_python_out=protos $(PROTOS)

# Fails when the committed generated code is stale.
proto-check: $(STAMP)
	$(BIN)/python -m pytest -q tests/test_proto_fresh.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m "not slow"

demo: $(STAMP)
	$(BIN)/forsaken demo

bench: $(STAMP)
	$(BIN)/forsaken bench round --json
	$(BIN)/forsaken bench secagg --json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
