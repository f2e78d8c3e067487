# FedEquity front door: `make run` and `make test`. Everything runs offline.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# torch is pinned to 2.13.0: this machine installs its local CPU wheel. Elsewhere, for a CPU-only
# torch, use TORCH_INDEX=https://download.pytorch.org/whl/cpu (see README).
TORCH_INDEX ?=
TORCH_SPEC ?= torch==2.13.0

# The offline environment of launch/env.py (OFFLINE_ENV), spelled again because make runs
# before the venv exists; tests/launch/test_env.py checks that the two agree.
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export FLWR_HOME := $(CURDIR)/.flwr
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export FEDEQUITY_CACHE ?= $(CURDIR)/.cache/fedequity

.PHONY: install run test test-fast check lint typecheck format bench bench-quick deploy-local certs validate-compose compose-test test-deploy evidence clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

run: $(STAMP)
	$(PY) -m simulations run simulations/experiments/default.toml

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy server clients strategies simulations task deploy launch tests docker/export_requirements.py

check: lint typecheck test

bench: $(STAMP)
	$(PY) simulations/benchmarks/overhead.py
	$(PY) simulations/benchmarks/scale.py
	$(PY) simulations/benchmarks/wire.py
	$(PY) simulations/benchmarks/sweep.py
	$(PY) simulations/benchmarks/finetune_modes.py
	$(PY) simulations/benchmarks/augment_cost.py
	$(PY) -m simulations bench --set model.name=tiny-bert --set model.finetune=full
	$(PY) simulations/benchmarks/summary.py --docs docs

# A reduced `bench` (no 10,000-client run, a 2-cell sweep): under 10 minutes on 2 cores.
bench-quick: $(STAMP)
	$(PY) simulations/benchmarks/overhead.py --set num-server-rounds=4
	$(PY) simulations/benchmarks/scale.py --clients 10,1000 --rounds 2
	$(PY) simulations/benchmarks/wire.py
	$(PY) simulations/benchmarks/sweep.py --variants fedavg --epsilons 8 --seeds 1,2 --set synthetic.num-examples=2000 --set num-server-rounds=3
	$(PY) simulations/benchmarks/augment_cost.py --k 3 --modes head --steps 5
	$(PY) simulations/benchmarks/summary.py

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

deploy-local: $(STAMP)
	$(PY) -m deploy.local

certs: $(STAMP)
	$(PY) -m deploy.certs

validate-compose: $(STAMP)
	$(PY) -m deploy.validate_compose --fetch --require-cli

# The compose stack on a real Docker engine (root): engine installed if missing, images
# built into COMPOSE_DATA_ROOT (kept as the cache), COMPOSE_NODES SuperNodes, 2 rounds.
COMPOSE_NODES ?= 2
COMPOSE_DATA_ROOT ?= $(CURDIR)/.cache/compose-engine
compose-test: $(STAMP)
	FEDEQUITY_COMPOSE_TEST=1 FEDEQUITY_COMPOSE_NODES=$(COMPOSE_NODES) \
	FEDEQUITY_COMPOSE_ROOT=$(COMPOSE_DATA_ROOT) \
	$(PY) -m pytest -m compose -s tests/deploy/test_compose_stack.py $(PYTEST_ARGS)

test-deploy: $(STAMP)
	$(PY) -m pytest -m deploy $(PYTEST_ARGS)

evidence: $(STAMP)
	$(PY) -m simulations evidence

clean:
	rm -rf .flwr .cache .mypy_cache .ruff_cache .pytest_cache
