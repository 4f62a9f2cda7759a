"""`/readyz`: ready only when the database answers at the migrations' head and Redis answers."""

import time

from src.devserver.databases import migrate
from src.devserver.redis_server import free_port


def test_ready_when_the_database_and_redis_answer(client):
    reply = client.get("/readyz")
    assert reply.status_code == 200
    assert reply.json() == {"status": "ready", "checks": {"database": "ok", "redis": "ok"}}


def test_not_ready_without_redis_and_says_so_at_once(client, monkeypatch):
    from src.config import settings

    monkeypatch.setattr(settings, "redis_url", f"redis://127.0.0.1:{free_port()}/0")  # nothing listens
    started = time.monotonic()
    reply = client.get("/readyz")
    assert time.monotonic() - started < 2.0
    assert reply.status_code == 503 and reply.headers["Retry-After"] == "2"
    assert reply.json() == {"status": "unavailable", "checks": {"database": "ok", "redis": "unavailable"}}
    assert client.get("/healthz").status_code == 200  # liveness does not depend on Redis


def test_not_ready_while_a_migration_is_missing(client, db):
    migrate(db, "-1", "downgrade")
    try:
        reply = client.get("/readyz")
        assert reply.status_code == 503
        assert reply.json()["checks"]["database"].startswith("migrations not at head")
    finally:
        migrate(db)
    assert client.get("/readyz").status_code == 200
