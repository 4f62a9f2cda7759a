#!/usr/bin/env bash
# Flower, the Celery dashboard, on :5555 (FLOWER_PORT). Set FLOWER_BASIC_AUTH=user:password to require
# a login; do that whenever the port is reachable by anyone but you.
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/celery ] && PATH="$PWD/.venv/bin:$PATH"
args=(--port="${FLOWER_PORT:-5555}")
if [ -n "${FLOWER_BASIC_AUTH:-}" ]; then
  args+=(--basic-auth="$FLOWER_BASIC_AUTH")
fi
exec celery -A src.celery_app flower "${args[@]}" "$@"
