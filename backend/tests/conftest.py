"""Test services: a private Redis and a fresh PostgreSQL database for this run, SQLite beside it.

Each test process has its own (pytest-xdist runs two: see pyproject.toml). They are started when
this file is imported, before `src` reads its settings, so every `src` import (and every worker
process the tests start) sees its own Redis and databases. With CI=true a missing PostgreSQL or
Redis fails the run; elsewhere the tests needing it skip.
"""

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from src.devserver.databases import DEFAULT_PG_ADMIN_URL, create_pg_database, drop_pg_database, migrate
from src.devserver.load import raised_rate_limits
from src.devserver.redis_server import PrivateRedis

IN_CI = os.environ.get("CI", "").lower() == "true"
RUN_DIR = Path(tempfile.mkdtemp(prefix="herald-tests-"))
PG_ADMIN_URL = os.environ.get("TEST_DATABASE_URL", DEFAULT_PG_ADMIN_URL)
SQLITE_URL = f"sqlite:///{RUN_DIR / 'herald.db'}"

_problems: dict[str, str] = {}

try:
    _redis: PrivateRedis | None = PrivateRedis(workdir=str(RUN_DIR)).start()
    os.environ["REDIS_URL"] = _redis.url
except Exception as exc:  # any failure to start means: no Redis for this run
    _redis = None
    _problems["redis"] = f"cannot start a private redis-server: {exc}"
    os.environ["REDIS_URL"] = "redis://127.0.0.1:1/0"

try:
    PG_URL = create_pg_database(PG_ADMIN_URL)
except psycopg.Error as exc:
    PG_URL = ""
    _problems["postgresql"] = f"cannot create a PostgreSQL database via {PG_ADMIN_URL}: {exc}"

os.environ["DATABASE_URL"] = SQLITE_URL
os.environ.setdefault("EMAIL_QUEUE_INTERVAL", "1")
# The suite signs up, logs in and changes statuses thousands of times from one address: the limits
# are raised for it, and tests/test_ratelimit.py lowers them for its own API processes. The
# production defaults are checked there too.
os.environ.update(raised_rate_limits())


def require_service(name: str) -> None:
    """Skip (or, in CI, fail) a test that needs a service this run could not have."""
    if name in _problems:
        if IN_CI:
            pytest.fail(f"CI=true and {_problems[name]}")
        pytest.skip(_problems[name])


def pytest_sessionstart(session: pytest.Session) -> None:
    if IN_CI and _problems:
        pytest.exit("CI=true but services are missing: " + "; ".join(_problems.values()), returncode=3)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """A failing test's report ends with the recent log lines of the servers and workers it ran,
    so a failure in CI can be understood from its output alone."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    started = call.start - 5
    for log in sorted(RUN_DIR.glob("*.log")):
        if log.stat().st_mtime >= started:
            tail = log.read_text(errors="replace").splitlines()[-40:]
            report.sections.append((f"{log.name}, last lines", "\n".join(tail)))


def pytest_unconfigure(config: pytest.Config) -> None:
    if _redis is not None:
        _redis.stop()
    if PG_URL:
        drop_pg_database(PG_URL)


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each test using the database runs once on SQLite and once on PostgreSQL."""
    from src.db import configure_engine

    if request.param == "postgresql":
        require_service("postgresql")
        url = PG_URL
    else:
        url = SQLITE_URL
    migrate(url)
    configure_engine(url)
    yield url
    migrate(url, "base", "downgrade")


@pytest.fixture
def db(database_url: str) -> Iterator[str]:
    """A migrated, empty database for one test."""
    from sqlalchemy import text

    from src import db as herald_db
    from src.models import Base
    from src.relay import relay

    yield database_url
    assert herald_db.engine is not None
    # No task of this test may run into the next one: a worker that takes a wake-up claims whatever is
    # due by then (ids start again at 1 below). What the relay holds back (they are spaced) goes out
    # now, what still waits in Redis is dropped, and what the worker already took is let finish.
    relay.flush(5)
    _settle_the_worker()
    # The notification sequence is left as it is: like production, it only ever grows, and the API
    # processes' streams of the next test go on from where they are.
    tables = [t.name for t in Base.metadata.sorted_tables if t.name != "notification_sequence"]
    with herald_db.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        else:
            for name in reversed(tables):
                conn.execute(text(f"DELETE FROM {name}"))


def _settle_the_worker(timeout: float = 3.0) -> None:
    """Drop the wake-ups waiting in Redis, then wait (a while at most) until the worker finished the
    tasks it took in the last seconds: with late acknowledgement, kombu keeps a task it delivered in
    `unacked_index` (scored by delivery time) until done. A worker killed by a test leaves older
    ones there until the visibility timeout; those are not waited for."""
    if "redis" in _problems:
        return
    import redis

    with contextlib.suppress(redis.RedisError):  # a test left Redis stopped: nothing waits there
        broker = redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=1)
        broker.delete("emails")
        deadline = time.monotonic() + timeout
        while broker.zcount("unacked_index", time.time() - 5, "+inf") and time.monotonic() < deadline:
            time.sleep(0.02)


@pytest.fixture
def client(db: str) -> Iterator["object"]:
    from fastapi.testclient import TestClient

    from src.main import app

    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def redis_url() -> str:
    require_service("redis")
    return os.environ["REDIS_URL"]


class Caller:
    """A registered user and the headers that authenticate them."""

    def __init__(self, user_id: int, email: str, token: str) -> None:
        self.id = user_id
        self.email = email
        self.token = token
        self.headers = {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="session")
def password_hash() -> str:
    from src.auth.security import hash_password

    return hash_password("correct horse battery")


@pytest.fixture
def make_user(db: str, password_hash: str):
    """Users inserted directly (argon2 per user would dominate the suite's time), with real tokens."""
    from datetime import timedelta

    from src.auth.models import User
    from src.auth.security import create_session_token
    from src.db import SessionLocal, utcnow

    def make(name: str, verified: bool = True) -> Caller:
        with SessionLocal() as session:
            user = User(email=f"{name}@example.com", name=name.title(), password_hash=password_hash)
            user.email_verified_at = utcnow() if verified else None
            session.add(user)
            session.commit()
        return Caller(
            user.id, user.email, create_session_token(user.id, password_hash, "access", timedelta(hours=1))
        )

    return make


@pytest.fixture
def join(client):
    """Invite `member` to the organization as `inviter` and accept as `member`: how anyone joins."""
    from src.relay import relay

    def invite_and_accept(org_id: int, inviter: Caller, member: Caller, role: str = "member") -> None:
        invited = client.post(
            f"/api/orgs/{org_id}/members", json={"email": member.email, "role": role}, headers=inviter.headers
        )
        assert invited.status_code == 202, invited.text
        assert relay.flush(5)  # published, so accepting marks the invitation's notification read
        accepted = client.post(f"/api/invitations/{invited.json()['id']}/accept", headers=member.headers)
        assert accepted.status_code == 200, accepted.text

    return invite_and_accept


@pytest.fixture
def make_org(client, join):
    """An organization owned by `owner`, which `members` joined under the given role."""

    def make(owner: Caller, *members: Caller, role: str = "member", name: str = "Acme") -> int:
        response = client.post("/api/orgs", json={"name": name}, headers=owner.headers)
        assert response.status_code == 201, response.text
        org_id = response.json()["id"]
        for member in members:
            join(org_id, owner, member, role)
        return org_id

    return make


@pytest.fixture
def make_task(client):
    """A task `reporter` creates in the organization, with an assignee and watchers if given."""

    def make(org_id: int, reporter: Caller, assignee: Caller | None = None, *watchers: Caller) -> dict:
        body = {
            "title": "Fix login",
            "assignee_id": assignee.id if assignee else None,
            "watcher_ids": [w.id for w in watchers],
        }
        response = client.post(f"/api/orgs/{org_id}/tasks", json=body, headers=reporter.headers)
        assert response.status_code == 201, response.text
        return response.json()

    return make


@pytest.fixture(scope="session")
def smtp_sink():
    from src.devserver.smtp_sink import SmtpSink

    sink = SmtpSink().start()
    yield sink
    sink.stop()


@pytest.fixture
def sink(smtp_sink):
    """The SMTP sink, emptied for this test."""
    smtp_sink.messages.clear()
    smtp_sink.replies.clear()
    smtp_sink.rcpt_replies.clear()
    yield smtp_sink
    smtp_sink.replies.clear()
    smtp_sink.rcpt_replies.clear()


@pytest.fixture
def delivery_to_sink(sink, monkeypatch):
    """In-process delivery (`src.emails.delivery`) mails the sink."""
    from src.config import settings

    monkeypatch.setattr(settings, "smtp_host", "127.0.0.1")
    monkeypatch.setattr(settings, "smtp_port", sink.port)
    monkeypatch.setattr(settings, "smtp_use_tls", False)
    return sink


@pytest.fixture
def redis_server() -> PrivateRedis:
    require_service("redis")
    assert _redis is not None
    return _redis


WORKER_LEASE_SECONDS = 3
BROKERS = ("redis", "rabbitmq")  # `@pytest.mark.parametrize("broker", BROKERS, indirect=True)`


def _worker_env(database_url: str, smtp_sink, **extra: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp_sink.port),
        "SMTP_USE_TLS": "false",
        "EMAIL_LEASE_SECONDS": str(WORKER_LEASE_SECONDS),
        "EMAIL_BACKOFF_BASE_SECONDS": "0.2",
        "EMAIL_BACKOFF_MAX_SECONDS": "0.5",
        **extra,
    }


@pytest.fixture(scope="session")
def celery_worker(database_url: str, smtp_sink):
    """A real Celery worker process on this run's Redis and the current database, mailing the sink."""
    require_service("redis")
    import redis

    from src.devserver.processes import CeleryWorker

    redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()
    worker = CeleryWorker(_worker_env(database_url, smtp_sink), RUN_DIR / "worker.log", concurrency=2).start()
    yield worker
    worker.stop()


@pytest.fixture(scope="session")
def rabbitmq():
    """A private RabbitMQ (Debian's rabbitmq-server), started for the first test that runs on it."""
    from src.devserver.rabbitmq_server import PrivateRabbitMQ

    try:
        server = PrivateRabbitMQ(workdir=str(RUN_DIR / "rabbitmq")).start()
    except (OSError, RuntimeError) as exc:
        if IN_CI:
            pytest.fail(f"CI=true and no private RabbitMQ: {exc}")
        pytest.skip(f"no private RabbitMQ: {exc}")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def rabbitmq_worker(database_url: str, smtp_sink, rabbitmq):
    """Like `celery_worker`, with CELERY_BROKER_URL on the private RabbitMQ (Redis stays for the rest)."""
    from src.devserver.processes import CeleryWorker

    env = _worker_env(database_url, smtp_sink, CELERY_BROKER_URL=rabbitmq.url)
    worker = CeleryWorker(env, RUN_DIR / "worker-rabbitmq.log", concurrency=2).start()
    yield worker
    worker.stop()


@pytest.fixture
def broker(request: pytest.FixtureRequest) -> str:
    """The Celery broker a test's worker and publishes use: Redis, unless the test is parametrized
    over BROKERS (only the email pipeline's, so the suite does not run twice)."""
    return getattr(request, "param", "redis")


@pytest.fixture
def broker_server(broker: str, request: pytest.FixtureRequest):
    """The running broker of this test, which it may stop and start: PrivateRedis or PrivateRabbitMQ."""
    return request.getfixturevalue("redis_server" if broker == "redis" else "rabbitmq")


def _use_broker(url: str) -> None:
    """Point this process's Celery app (its publishes) at `url`: the pools made for the old one go."""
    from kombu import pools

    from src.celery_app import app, broker_transport_options
    from src.relay import relay

    relay.flush(5)  # what was owed to the old broker goes there
    pools.reset()  # closes every pooled connection and forgets the pools
    app.conf.update(broker_url=url, broker_transport_options=broker_transport_options(url))
    app._pool = None  # Celery makes both again from the configuration on first use
    app.amqp._producer_pool = None


@pytest.fixture
def worker(broker: str, db, request: pytest.FixtureRequest):
    """The shared worker of `broker`, running and connected, as a supervisor (systemd) keeps it in
    production; with RabbitMQ, this process publishes there too for the test.

    A test may have stopped or killed it, or restarted the broker under it; a Celery worker that loses
    Redis while it holds unacknowledged messages can exit with "Unrecoverable error" (kombu).
    """
    celery_worker = request.getfixturevalue("celery_worker" if broker == "redis" else "rabbitmq_worker")
    if broker != "redis":
        _use_broker(request.getfixturevalue("rabbitmq").url)
    try:
        if not celery_worker.running:
            celery_worker.start()
        celery_worker.wait_until_connected()
        yield celery_worker
    finally:
        if broker != "redis":
            _use_broker(os.environ["REDIS_URL"])


@pytest.fixture(scope="session")
def api_servers(database_url: str):
    """Two real API processes on this run's Redis and the current database."""
    require_service("redis")
    from src.devserver.processes import ApiServer
    from src.devserver.redis_server import free_port

    env = {"DATABASE_URL": database_url, "LIVE_PING_SECONDS": "1", "LIVE_MEMBERSHIP_CHECK_SECONDS": "1"}
    servers = [ApiServer(env, RUN_DIR / f"api-{name}.log", free_port()).start() for name in ("a", "b")]
    yield servers
    for server in servers:
        server.stop()
