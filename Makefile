# Herald: `make run` runs everything on the embedded defaults, `make test` runs the whole suite.
# `make run PORT=8001 SINK_PORT=1026` moves the API and the SMTP sink (PORT and SINK_PORT in backend/.env
# do too). Recipes `exec` their program, so Ctrl-C reaches it with no shell in between to report an error.
PYTHON ?= python3
VENV := backend/.venv
BIN := $(VENV)/bin
N ?=
DURATION ?= 300
RATE ?= 30

.PHONY: run worker beat flower inspect test lint bench-email bench-live bench-api soak

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
	cd backend && exec .venv/bin/python -m src.devserver.run $(if $(PORT),--port $(PORT)) $(if $(SINK_PORT),--sink-port $(SINK_PORT))

# The Celery processes one by one, as production runs them (deploy/systemd/), on backend/.env's settings.
worker: $(VENV)/.runtime
	cd backend && exec ./start_celery_worker.sh

beat: $(VENV)/.runtime
	cd backend && exec ./start_celery_beat.sh

flower: $(VENV)/.runtime
	cd backend && exec ./start_celery_flower.sh

inspect: $(VENV)/.runtime
	cd backend && exec .venv/bin/python -m celery -A src.celery_app inspect active

test: $(VENV)/.dev
	cd backend && .venv/bin/ruff check . && .venv/bin/python -m pytest

lint: $(VENV)/.dev
	cd backend && .venv/bin/ruff check . && .venv/bin/ruff format --check .

bench-email: $(VENV)/.dev
	cd backend && .venv/bin/python -m benchmarks.email_pipeline $(if $(N),--n $(N)) $(if $(DB),--database $(DB))

bench-live: $(VENV)/.dev
	cd backend && .venv/bin/python -m benchmarks.live_fanout $(if $(N),--n $(N)) $(if $(DB),--database $(DB))

# RATE is the soak's too (30 there): bench-api's own default is the issue's 100 changes/s.
bench-api: RATE = 100
bench-api: $(VENV)/.dev
	cd backend && .venv/bin/python -m benchmarks.status_changes $(if $(N),--n $(N)) $(if $(DB),--database $(DB)) --rate $(RATE)

soak: $(VENV)/.dev
	cd backend && .venv/bin/python -m benchmarks.soak --duration $(DURATION) --rate $(RATE)
