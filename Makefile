# fraudstream — the two set-up commands are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA   ?= ../shared/data/handbook-2018-04-01_2018-07-31.csv.gz

.PHONY: install services run test test-faults k8s-check lint typecheck unit bench backtest clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The real servers the integration tests start: Debian's redis-server (installed when it is not on
# PATH) and the Apache Kafka broker's jars, fetched with Maven into ~/.cache/fraudstream (or
# $FRAUD_KAFKA_HOME) when missing. Needs a JDK 17 and Maven. The browser tests drive Debian's
# chromium, installed here the same way.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

services: install
	@command -v redis-server >/dev/null || { \
	  $(SUDO) apt-get update -q && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server; }
	@command -v chromium >/dev/null || { \
	  $(SUDO) apt-get update -q && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; }
	@command -v promtool >/dev/null || { \
	  $(SUDO) apt-get update -q && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus; }
	$(BIN)/python -m tests.services.kafka prepare

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy models

unit: install
	$(BIN)/pytest -q tests/unit

# The whole suite on Apache Kafka + redis-server, then the integration suite again on the embedded
# pair (Tansu + Valkey) that `make run` uses.
test: lint typecheck services k8s-check
	$(BIN)/pytest -q tests --ignore=tests/faults
	FRAUD_TEST_STACK=embedded $(BIN)/pytest -q tests/integration

# Fault cases under load on Apache Kafka + a persistent redis-server (about 3 minutes): kill -9,
# rebalance, Redis and broker restarts, a stalling LLM, poison records, a stalled SSE client.
# Figures go to $$FRAUD_FAULTS_OUT (default bench/out/faults.json).
test-faults: services
	$(BIN)/pytest -q tests/faults

# Render every Kustomize overlay and validate it offline (Kubernetes schemas, promtool, settings
# parity, deployment rules), plus the Dockerfile's rules and hadolint.
k8s-check: services
	$(BIN)/python -m tests.deploy.check

# The whole system on this machine in one command: the embedded broker and Valkey, a worker, the
# API with its console, and a live feed — the handbook's payments when $(DATA) is there, else a
# simulated month — its first week fast-forwarded so the model has learned, then paced at about 30
# payments a second. Prints the console's address and a sign-in token; Ctrl-C stops everything.
# More options: make run UP_ARGS="--feed-speed 120x --warmup-days 3" (see fraudstream up --help).
run: install
	$(BIN)/fraudstream up --feed $(if $(wildcard $(DATA)),replay --feed-file $(DATA),simulate) $(UP_ARGS)

backtest: install
	$(BIN)/fraudstream backtest $(DATA) --preset handbook \
	  --test-from 2018-07-25 --test-to 2018-07-31 --report bench/out/backtest-report

bench: install services
	$(BIN)/python -m bench.run --data $(DATA) --out bench/results.json
	$(BIN)/python -m bench.worker --data $(DATA) --out bench/worker.json
	$(BIN)/python -m bench.sse --out bench/sse.json

clean:
	rm -rf $(VENV) .run bench/out .pytest_cache .mypy_cache .ruff_cache
