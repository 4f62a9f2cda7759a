#!/usr/bin/env bash
# Flower, the Celery dashboard, on :5555 (FLOWER_PORT). Set FLOWER_BASIC_AUTH=user:password (in the
# environment or backend/.env) to require a login; do that whenever others can reach the port.
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/celery ] && PATH="$PWD/.venv/bin:$PATH"
if [ -z "${FLOWER_BASIC_AUTH:-}" ] && [ -f .env ]; then
  FLOWER_BASIC_AUTH=$(sed -n 's/^FLOWER_BASIC_AUTH=//p' .env | tail -n 1)
fi
# Flower reads FLOWER_* variables itself: the password stays out of the process list.
[ -n "${FLOWER_BASIC_AUTH:-}" ] && export FLOWER_BASIC_AUTH || unset FLOWER_BASIC_AUTH
exec celery -A src.celery_app flower --port="${FLOWER_PORT:-5555}" "$@"
