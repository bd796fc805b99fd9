# The front door. `make demo` and `make test` each do all set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch: the CPU build by default (see deploy/install-torch.sh); `make venv TORCH_VARIANT=cu128`
# installs that CUDA build instead, `TORCH_VARIANT=pypi` PyPI's default wheel.
TORCH_VARIANT ?= cpu
export TORCH_VARIANT
STAMP := $(VENV)/.installed-torch-$(TORCH_VARIANT)
PROTO_DIR := protos/forsaken/v1
PROTOS := $(wildcard $(PROTO_DIR)/*.proto)

.PHONY: venv proto proto-check lint typecheck test test-fast test-deploy demo bench docs clean

venv: $(STAMP)

$(STAMP): pyproject.toml deploy/install-torch.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	sh deploy/install-torch.sh $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev,examples]'
	touch $(STAMP)

# Generated code is committed; this regenerates it in place.
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I protos --python_out=protos --pyi_out=protos \
		--grpc_python_out=protos $(PROTOS)

# Fails when the committed generated code is stale.
proto-check: $(STAMP)
	$(BIN)/python -m pytest -q tests/test_proto_fresh.py

lint: $(STAMP) typecheck
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy cannot follow pyproject's package-dir (forsaken.cli is cli/, forsaken.common is common/,
# ...), so it checks a tree of symlinks laid out as the installed package; its configuration is
# [tool.mypy] in pyproject.toml.
TYPECHECK_TREE := build/typecheck
typecheck: $(STAMP)
	rm -rf $(TYPECHECK_TREE) && mkdir -p $(TYPECHECK_TREE)/forsaken
	ln -s $(foreach f,$(filter-out %/__pycache__,$(wildcard forsaken/*)) cli lab common server \
		client,$(CURDIR)/$(f)) $(TYPECHECK_TREE)/forsaken/
	ln -s $(CURDIR)/$(PROTO_DIR) $(TYPECHECK_TREE)/forsaken/v1
	$(BIN)/mypy

# The linters take seconds, so every test run starts with them.
test: $(STAMP) lint
	$(BIN)/python -m pytest -q -ra

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m "not slow"

# The deployment, end to end: a Docker engine (started if none runs), the image built from
# deploy/Dockerfile, the compose cluster to its rounds and a completed ForgetMe, then
# `down -v`. Skips, loudly, where no engine can start. DEPLOY_ARGS: see
# `python deploy/cluster_check.py --help` (e.g. --base-image python:3.11-slim-bookworm).
DEPLOY_TIMEOUT ?= 900
DEPLOY_ARGS ?=

test-deploy: $(STAMP)
	timeout -k 60 $(DEPLOY_TIMEOUT) $(BIN)/python deploy/cluster_check.py $(DEPLOY_ARGS)

demo: $(STAMP)
	$(BIN)/forsaken demo

# Regenerates the README's configuration reference from the config dataclasses.
docs: $(STAMP)
	$(BIN)/python -m forsaken.lab.docgen README.md

bench: $(STAMP)
	$(BIN)/forsaken bench round --json
	$(BIN)/forsaken bench secagg --json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache

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

$(BENCH_STAMP): pyproject.toml lab/compare/flower_app/pyproject.toml deploy/install-torch.sh
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --upgrade pip
	sh deploy/install-torch.sh $(BENCH_VENV)/bin/python
	$(BENCH_VENV)/bin/python -m pip install -q flwr==$(FLWR_VERSION) torch==2.13.0 numpy \
		scikit-learn mlxtend
	$(BENCH_VENV)/bin/python -m pip install -q --no-deps -e . -e lab/compare/flower_app
	touch $@

bench-compare: $(STAMP) $(BENCH_STAMP)
	$(BIN)/python -m forsaken.lab.compare --venv $(BENCH_VENV) $(BENCH_ARGS)

bench-compare-quick: $(STAMP) $(BENCH_STAMP)
	$(BIN)/python -m forsaken.lab.compare --venv $(BENCH_VENV) --quick $(BENCH_ARGS)
