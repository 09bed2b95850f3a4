# Compliance Jobs — two commands on a fresh machine: `make demo` and `make test`.
# Only python3 is assumed; everything else is installed into .venv by uv.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint format up down bench venv lock clean

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@test -x $(BIN)/uv || $(BIN)/pip install --quiet --disable-pip-version-check "uv==$$(sed -n 's/^uv==//p' requirements.txt)"
	$(BIN)/uv pip install --python $(BIN)/python --quiet -r requirements.txt
	$(BIN)/uv pip install --python $(BIN)/python --quiet --no-deps -e .
	@touch $(STAMP)

lock: ## re-resolve requirements.in into the fully pinned requirements.txt
	@test -x $(BIN)/uv || { $(PY) -m venv $(VENV) && $(BIN)/pip install --quiet uv; }
	$(BIN)/uv pip compile requirements.in -o requirements.txt --python-version 3.11 --quiet

demo: venv ## seed a world, run every DAG, copy outputs to .demo/out/
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python scripts/demo.py

# Two pytest-xdist workers, one test file each at a time (each has its own Airflow home, see
# tests/conftest.py); XDIST= runs serially.
XDIST ?= -n 2 --dist loadfile

test: venv ## the whole suite (unit, DAG, end-to-end)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m compliance datamap check config/datamap.yaml
	$(BIN)/python -m compliance retention check config/retention.yaml
	$(BIN)/python -m compliance datamap check tests/second_world/datamap.yaml
	COMPLIANCE_DATAMAP=tests/second_world/datamap.yaml \
	  $(BIN)/python -m compliance retention check tests/second_world/retention.yaml

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

up: venv ## Airflow UI on 127.0.0.1:8080 over the seeded world and local S3
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python scripts/localstack.py up

down: ## stop everything `make up` started
	@test -x $(BIN)/python && PATH=$(abspath $(BIN)):$$PATH $(BIN)/python scripts/localstack.py down || true

bench: venv ## benchmarks with baselines side by side (see benchmarks/README.md)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m benchmarks.run $(BENCH_ARGS)

clean: down
	rm -rf .demo
