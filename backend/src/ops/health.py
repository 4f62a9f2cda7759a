"""`/healthz` (liveness) and `/readyz` (readiness) for load balancers, supervisors and orchestrators.

Liveness says only that the process answers: it restarts nothing because PostgreSQL is down.
Readiness says whether this process can serve now: the database answers and has every migration
this code expects, and Redis answers. Both checks run together and give up after READY_TIMEOUT, so a
probe gets its answer within about a second even when a dependency hangs. The answer names what
failed, not why: the reason (addresses, driver messages) goes to the log, once per outage.
"""

import asyncio
import functools
from collections.abc import Coroutine
from typing import Any

import anyio
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from src import outages
from src.db import SessionLocal
from src.devserver.databases import ALEMBIC_INI
from src.redis_client import async_redis

router = APIRouter(tags=["ops"])

READY_TIMEOUT = 1.0  # seconds each check may take


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness, answered on the event loop from memory: busy threads or a database outage never
    make a running process look dead."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "a dependency is unavailable; `checks` says which"}})
async def readyz() -> JSONResponse:
    database, redis = await asyncio.gather(_timed(_check_database()), _timed(_check_redis()))
    ready = database == "ok" and redis == "ok"
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", "checks": {"database": database, "redis": redis}},
        status_code=200 if ready else 503,
        headers={} if ready else {"Retry-After": "2"},
    )


async def _timed(check: Coroutine[Any, Any, str]) -> str:
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            return await check
    except TimeoutError:
        return "no answer in time"


async def _check_database() -> str:
    """On a request thread: when every one is busy, the check times out and the process, which
    could not serve a request now either, says it is not ready."""
    return await anyio.to_thread.run_sync(_database_state, abandon_on_cancel=True)


def _database_state() -> str:
    try:
        with SessionLocal() as session:
            current = set(session.scalars(text("SELECT version_num FROM alembic_version")))
    except Exception as exc:  # any failure means not ready
        outages.database.failed(exc, trip_breaker=False)
        return "unavailable"
    outages.database.ok()
    expected = migration_heads()
    if current != expected:
        return f"migrations not at head: the database is at {sorted(current)}, the code at {sorted(expected)}"
    return "ok"


@functools.cache
def migration_heads() -> set[str]:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    return set(ScriptDirectory.from_config(Config(str(ALEMBIC_INI))).get_heads())


async def _check_redis() -> str:
    client = async_redis(socket_timeout=READY_TIMEOUT, socket_connect_timeout=READY_TIMEOUT)
    try:
        await client.ping()
        outages.broker.ok()
        return "ok"
    except Exception as exc:  # any failure means not ready
        outages.broker.failed(exc, trip_breaker=False)
        return "unavailable"
    finally:
        await client.aclose()
