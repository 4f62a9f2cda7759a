#!/usr/bin/env bash
# Flower, the Celery dashboard, on FLOWER_ADDRESS:FLOWER_PORT (127.0.0.1:5555). Anywhere but
# 127.0.0.1 it refuses to start without FLOWER_BASIC_AUTH=user:password (environment or backend/.env):
# the dashboards show task arguments and can revoke tasks and shut workers down.
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/celery ] && PATH="$PWD/.venv/bin:$PATH"
from_env_file() { [ -f .env ] && sed -n "s/^$1=//p" .env | tail -n 1 || true; }
FLOWER_BASIC_AUTH=${FLOWER_BASIC_AUTH:-$(from_env_file FLOWER_BASIC_AUTH)}
FLOWER_ADDRESS=${FLOWER_ADDRESS:-$(from_env_file FLOWER_ADDRESS)}
FLOWER_ADDRESS=${FLOWER_ADDRESS:-127.0.0.1}
FLOWER_PORT=${FLOWER_PORT:-$(from_env_file FLOWER_PORT)}
if [ -z "$FLOWER_BASIC_AUTH" ] && [ "$FLOWER_ADDRESS" != "127.0.0.1" ]; then
  echo "start_celery_flower.sh: refusing to serve Flower on $FLOWER_ADDRESS without a login;" \
    "set FLOWER_BASIC_AUTH=user:password or FLOWER_ADDRESS=127.0.0.1" >&2
  exit 2
fi
# Flower reads FLOWER_* variables itself: the password stays out of the process list. Its JSON API
# (/api/...) answers requests carrying the login. Without a login (only on 127.0.0.1, see above) it
# answers 401 unless FLOWER_UNAUTHENTICATED_API=true, which is opt-in: Flower then also lets any web
# page open in this machine's browser call it (it allows every origin), and that API can stop workers.
FLOWER_UNAUTHENTICATED_API=${FLOWER_UNAUTHENTICATED_API:-$(from_env_file FLOWER_UNAUTHENTICATED_API)}
if [ -n "$FLOWER_BASIC_AUTH" ]; then
  export FLOWER_BASIC_AUTH
  unset FLOWER_UNAUTHENTICATED_API
elif [ "$FLOWER_UNAUTHENTICATED_API" = "true" ]; then
  unset FLOWER_BASIC_AUTH
  export FLOWER_UNAUTHENTICATED_API
else
  unset FLOWER_BASIC_AUTH FLOWER_UNAUTHENTICATED_API
fi
exec celery -A src.celery_app flower --address="$FLOWER_ADDRESS" --port="${FLOWER_PORT:-5555}"
