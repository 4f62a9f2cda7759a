#!/usr/bin/env bash
# Celery beat: schedules the email queue processor every EMAIL_QUEUE_INTERVAL seconds (default 60).
# Run exactly one per deployment (a second one is harmless, only wasteful: claims prevent double sends).
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/celery ] && PATH="$PWD/.venv/bin:$PATH"
mkdir -p .run
exec celery -A src.celery_app beat --loglevel=info --schedule=.run/celerybeat-schedule "$@"
