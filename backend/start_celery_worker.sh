#!/usr/bin/env bash
# Celery worker on all of Herald's queues. Run from backend/; extra arguments go to celery.
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/celery ] && PATH="$PWD/.venv/bin:$PATH"
exec celery -A src.celery_app worker --loglevel=info --concurrency="${CELERY_CONCURRENCY:-4}" \
  --queues=emails,notifications,default "$@"
