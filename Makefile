# support-agent — `make run` starts the stack, `make test` runs the tests. `make help` lists the rest.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
PROTOS := $(wildcard protos/support/v1/*.proto)
STUBS := support/v1/__init__.py
DIR ?= kb
SUITE ?= evals/sample_kb.yaml
PYTEST_ARGS ?=
# `buf breaking` checks protos/ against the main branch: origin/main when the clone has it (CI, a fresh clone),
# else the local main. BREAKING_REF=<git ref> compares with another.
BREAKING_REF ?= $(shell git rev-parse -q --verify refs/remotes/origin/main >/dev/null && echo refs/remotes/origin/main || echo refs/heads/main)

.DEFAULT_GOAL := help
.PHONY: help install stubs run test test-fast lint fmt ingest chat bench bench-retrieval eval compat soak compose-check k8s-check docker-lint image-check clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . --config-settings editable_mode=compat
	@touch $@

install: $(STAMP) $(STUBS) ## Create .venv, install pinned dependencies, generate stubs

$(STUBS): $(PROTOS) $(STAMP)
	@mkdir -p support/v1
	$(PY) -m grpc_tools.protoc -I protos --python_out=. --grpc_python_out=. --pyi_out=. $(PROTOS)
	@touch support/__init__.py support/v1/__init__.py

stubs: $(STUBS) ## Generate Python stubs from protos/ (grpcio-tools, with .pyi)

run: install ## Start the three services on embedded defaults (ingests the sample KB if empty); Ctrl-C stops
	$(PY) -m devstack

test: install ## Lint, then run every test (real gRPC, ChromaDB, SQLite, grpcurl; fake LLM over HTTP)
	@scripts/ensure_system_tools.sh
	$(MAKE) --no-print-directory lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: install ## The edit-test loop: unit and in-process tests, no lint, no `slow` or `e2e` tests
	@scripts/ensure_system_tools.sh
	$(PY) -m pytest -q -m "not slow and not e2e" $(PYTEST_ARGS)

lint: install ## ruff, mypy, buf lint, and buf breaking against the main branch
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .
	cd protos && ../$(BIN)/buf lint
	$(BIN)/buf breaking protos --against '.git#ref=$(BREAKING_REF),subdir=protos'

fmt: install ## Format the code with ruff
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

ingest: install ## Ingest DIR (default kb/) into the running retrieval service; PRUNE=1 removes vanished docs
	$(BIN)/support-ingest $(if $(PRUNE),--prune) $(DIR)

chat: install ## Interactive terminal chat over StreamChat (CUSTOMER=cust-001)
	$(BIN)/support-chat --customer-id $${CUSTOMER:-cust-001}

bench: install ## Benchmarks with baselines and targets; writes bench/results.json
	$(PY) -m bench

bench-retrieval: install ## Retrieval benchmark on a synthetic 100k-chunk collection (CHUNKS overrides)
	$(PY) -m bench.retrieval --json bench/retrieval.json $(if $(CHUNKS),--chunks $(CHUNKS))

eval: install ## Score the agent on SUITE (default evals/sample_kb.yaml)
	$(BIN)/support-eval $(SUITE)

compat: install ## Real llama-server + small model: README chats, every chat template, short eval (docs/models.md)
	$(PY) compat/run.py

soak: install ## 10-minute soak at a steady rate (SOAK_SECONDS overrides)
	$(PY) -m tests.soak --seconds $${SOAK_SECONDS:-600}

compose-check: install ## Validate docker-compose.yml with docker-compose config
	@scripts/ensure_system_tools.sh
	AUTH_CREDENTIALS_FILE=$${AUTH_CREDENTIALS_FILE:-data/credentials.json} docker-compose -f docker-compose.yml config -q

k8s-check: install ## Render the kustomize base and overlay; validate against the Kubernetes schemas
	$(BIN)/kubectl kustomize deploy/k8s/base | $(BIN)/kubernetes-validate --strict --quiet /dev/stdin
	$(BIN)/kubectl kustomize deploy/k8s/overlays/openai | $(BIN)/kubernetes-validate --strict --quiet /dev/stdin

docker-lint: install ## hadolint the Dockerfile
	$(BIN)/hadolint Dockerfile

image-check: install ## Build the 3 images (buildah), start them (podman), prove SERVING, uid 10001, chats; root, opt-in
	$(PY) scripts/image_check.py $(IMAGE_CHECK_ARGS)

clean: ## Remove the virtualenv, stubs and local data
	rm -rf $(VENV) support data .pytest_cache .mypy_cache .ruff_cache *.egg-info
