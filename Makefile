# nico-task-exporter: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo demo-stack test lint typecheck unit bench simulate generate clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/nico-task-exporter demo

# The demo plus a real Prometheus with the shipped rules (and Alertmanager where installed), on
# 127.0.0.1:9090 and :9093; a missing binary is said and left out.
demo-stack: $(STAMP)
	$(BIN)/python -m tools.demo_stack

simulate: $(STAMP)
	$(BIN)/nico-task-exporter simulate --web.listen-address 127.0.0.1:8080

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# Two workers: the end-to-end tests mostly wait on real time (tests/conftest.py schedules each file
# whole on one worker, and the CPU-heavy ones one after the other). PYTEST_WORKERS=0: one process.
PYTEST_WORKERS ?= 2
unit: $(STAMP)
	$(BIN)/pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

test: lint typecheck unit

# Rewrite every generated file (dashboards, alert rules, docs/metrics.md) from its source.
generate: $(STAMP)
	$(BIN)/python -m tools.generate

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
