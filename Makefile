# Herald: `make run` runs everything on the embedded defaults, `make test` runs the whole suite.
PYTHON ?= python3
VENV := backend/.venv
BIN := $(VENV)/bin
N ?=
DURATION ?= 300
RATE ?= 30

.PHONY: run test lint bench-email bench-live bench-api soak

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.runtime: backend/requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r backend/requirements.txt
	touch $@

$(VENV)/.dev: backend/requirements.txt backend/requirements-dev.txt $(VENV)/.runtime
	$(BIN)/pip install --quiet -r backend/requirements-dev.txt
	touch $@

run: $(VENV)/.runtime
	cd backend && .venv/bin/python -m src.devserver.run

test: $(VENV)/.dev
	cd backend && .venv/bin/ruff check . && .venv/bin/python -m pytest

lint: $(VENV)/.dev
	cd backend && .venv/bin/ruff check . && .venv/bin/ruff format --check .

bench-email: $(VENV)/.dev
	cd backend && .venv/bin/python -m benchmarks.email_pipeline $(if $(N),--n $(N)) $(if $(DB),--database $(DB))

bench-live: $(VENV)/.dev
	cd backend && .venv/bin/python -m benchmarks.live_fanout $(if $(N),--n $(N)) $(if $(DB),--database $(DB))

bench-api: $(VENV)/.dev
	cd backend && .venv/bin/python -m benchmarks.status_changes $(if $(N),--n $(N)) $(if $(DB),--database $(DB))

soak: $(VENV)/.dev
	cd backend && .venv/bin/python -m benchmarks.soak --duration $(DURATION) --rate $(RATE)
