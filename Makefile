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

# Regenerates the README's configuration reference from the config dataclasses.
docs: $(STAMP)
	$(BIN)/python -m forsaken.docgen README.md

bench: $(STAMP)
	$(BIN)/forsaken bench round --json
	$(BIN)/forsaken bench secagg --json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

# forsaken against Flower in its deployment mode, on this machine: writes bench-results.json
# and docs/benchmarks.md. Flower gets its own virtualenv because its protobuf pin (< 7)
# conflicts with ours; forsaken and the Flower app are installed there without dependencies
# so the Flower side trains with our own data, model and training code on the CPU torch.
# `make bench-compare BENCH_ARGS=--quick` (or `make bench-compare-quick`) is a smoke run.
BENCH_VENV ?= .venv-bench
FLWR_VERSION ?= 1.42.0
BENCH_STAMP := $(BENCH_VENV)/.installed-flwr-$(FLWR_VERSION)
BENCH_ARGS ?=

.PHONY: bench-compare bench-compare-quick

$(BENCH_STAMP): pyproject.toml cli/compare/flower_app/pyproject.toml
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install -q flwr==$(FLWR_VERSION) torch==2.13.0 numpy \
		scikit-learn mlxtend
	$(BENCH_VENV)/bin/python -m pip install -q --no-deps -e . -e cli/compare/flower_app
	touch $@

bench-compare: $(STAMP) $(BENCH_STAMP)
	$(BIN)/python -m forsaken.compare --venv $(BENCH_VENV) $(BENCH_ARGS)

bench-compare-quick: $(STAMP) $(BENCH_STAMP)
	$(BIN)/python -m forsaken.compare --venv $(BENCH_VENV) --quick $(BENCH_ARGS)
