"""PostgreSQL going away under Herald: a private cluster the tests may stop and restart, a real API
process, the real delivery path, a real SMTP sink."""

import asyncio
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import psycopg
import pytest
from sqlalchemy import delete, make_url, select, text
from sqlalchemy.exc import OperationalError

from src import db as herald_db
from src.auth.models import User
from src.auth.security import create_session_token
from src.db import SessionLocal, configure_engine
from src.devserver.databases import migrate
from src.devserver.postgres_server import PrivatePostgres
from src.devserver.processes import ApiServer
from src.devserver.redis_server import free_port
from src.emails import delivery
from src.emails.models import EmailAttempt, EmailQueue, EmailStatus
from src.emails.service import EmailService
from tests.conftest import IN_CI, RUN_DIR


@pytest.fixture(scope="module")
def cluster():
    """A migrated private cluster, which these tests may stop and restart."""
    try:
        pg = PrivatePostgres(workdir=str(RUN_DIR / "private-pg")).start()
    except (OSError, RuntimeError) as exc:
        if IN_CI:
            pytest.fail(f"CI=true and no private PostgreSQL cluster: {exc}")
        pytest.skip(f"no private PostgreSQL cluster: {exc}")
    migrate(pg.url)
    yield pg
    pg.stop()


@pytest.fixture
def on_cluster(cluster):
    """Herald's engine on the cluster for one test, then back on the run's database."""
    assert herald_db.engine is not None
    previous = herald_db.engine.url.render_as_string(hide_password=False)
    configure_engine(cluster.url)
    yield cluster
    if cluster.process is None:
        cluster.start()
    configure_engine(previous)


@pytest.fixture
def user(on_cluster, password_hash):
    with SessionLocal() as session:
        user = User(email=f"u{time.monotonic_ns()}@example.com", name="Uma", password_hash=password_hash)
        session.add(user)
        session.commit()
    token = create_session_token(user.id, password_hash, "access", timedelta(hours=1))
    return {"Authorization": f"Bearer {token}"}


def queue_thirty():
    """Thirty emails, alone on the module's cluster (earlier tests' emails removed)."""
    with SessionLocal() as session:
        session.execute(delete(EmailAttempt))
        session.execute(delete(EmailQueue))
        for n in range(30):
            EmailService.queue_email(
                session, to_email=f"r{n}@example.com", subject=f"S{n}", body_text="b", wake_worker=False
            )
        session.commit()


def deliver_with_fault(sink, fault):
    """Deliver one batch, slowed down by the sink so that `fault` strikes after its fifth message."""
    sink.handler.data_delay = 0.05
    # The fault runs on this thread: the cluster is told to die with the thread that started it.
    with ThreadPoolExecutor(1) as pool:
        sending = pool.submit(delivery.deliver)
        try:
            sink.wait_for(5, timeout=20)
            fault()
            return sending.result(timeout=60)
        finally:
            sink.handler.data_delay = 0.0


def test_database_restart_mid_batch_sends_each_email_once(on_cluster, delivery_to_sink):
    sink = delivery_to_sink
    queue_thirty()
    delivered = deliver_with_fault(sink, on_cluster.restart)
    assert len(sink.messages) > 5, "the restart came after the batch; nothing was tested"

    counts = Counter(m.message["Message-ID"] for m in sink.messages)
    assert delivered.sent == 30 and len(counts) == 30 and max(counts.values()) == 1
    with SessionLocal() as session:
        statuses = Counter(session.scalars(select(EmailQueue.status)))
    assert statuses == {EmailStatus.sent: 30}


def test_an_outcome_never_recorded_holds_back_the_next_message(on_cluster, delivery_to_sink, monkeypatch):
    """The database stays away past the lease: the outcome written while the next message's envelope
    is with the server is lost, so that message is never sent. Once the database is back and the claim
    expired, the batch is sent again, with at most the one unrecorded message twice."""
    from src.config import settings

    sink = delivery_to_sink
    monkeypatch.setattr(settings, "email_lease_seconds", 3)
    queue_thirty()
    stopped = deliver_with_fault(sink, on_cluster.stop)
    accepted = len(sink.messages)
    on_cluster.start()
    assert stopped.unreachable and accepted < 30, f"the batch went on without its outcomes ({accepted})"
    time.sleep(settings.email_lease_seconds + 0.5)  # the claim expires
    assert len(sink.messages) == accepted, "a message was accepted after the outcomes stopped"
    while delivery.deliver().claimed:
        pass
    counts = Counter(m.message["Message-ID"] for m in sink.messages)
    assert len(counts) == 30 and sum(n - 1 for n in counts.values()) <= 1
    with SessionLocal() as session:
        assert Counter(session.scalars(select(EmailQueue.status))) == {EmailStatus.sent: 30}


def test_requests_answer_503_at_once_while_the_database_is_down(on_cluster, user, redis_url):
    cluster = on_cluster
    log = RUN_DIR / "api-outage.log"
    api = ApiServer({"DATABASE_URL": cluster.url}, log, free_port()).start()
    try:
        with httpx.Client(base_url=api.url, timeout=10) as http:
            assert http.get("/api/orgs", headers=user).status_code == 200
            cluster.stop()
            with ThreadPoolExecutor(10) as pool:
                answers = list(pool.map(lambda _: timed(http.get, "/api/orgs", headers=user), range(30)))
            for response, seconds in answers:
                assert response.status_code == 503 and seconds < 2.0, (response.status_code, seconds)
                assert response.headers["Retry-After"] == "2"
                assert response.json() == {"detail": "the database is unavailable; retry shortly"}
            health, seconds = timed(http.get, "/healthz")
            assert health.status_code == 200 and seconds < 0.5
            ready, seconds = timed(http.get, "/readyz")
            assert ready.status_code == 503 and seconds < 2.0, (ready.status_code, seconds)
            assert ready.json()["checks"] == {"database": "unavailable", "redis": "ok"}

            cluster.start()
            assert http.get("/api/orgs", headers=user).status_code == 200
            assert http.get("/readyz").json()["status"] == "ready"
    finally:
        api.stop()
    text = log.read_text()
    assert text.count("the database is unavailable") == 1, "an outage is said once, not per request"
    assert "Traceback" not in text
    assert "the database is available again" in text


def test_a_request_whose_connection_died_closes_its_session_quietly(on_cluster):
    """The restart race the 503 test can hit: the connection dies while a request holds it, and the
    session's closing ROLLBACK fails after the response. It must not surface as an ASGI error."""

    async def request() -> None:
        sessions = herald_db.get_session()
        session = await anext(sessions)
        pid = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
        libpq = make_url(on_cluster.url).set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(libpq, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        with pytest.raises(StopAsyncIteration):
            await anext(sessions)  # closing raised nothing

    asyncio.run(request())
    assert herald_db.engine is not None and herald_db.engine.pool.checkedout() == 0
    with SessionLocal() as fresh:
        assert fresh.execute(text("SELECT 1")).scalar_one() == 1


@pytest.mark.parametrize("idle", [True, False], ids=["idle", "just-used"])
def test_only_an_idle_pooled_connection_is_pinged_before_use(on_cluster, monkeypatch, idle):
    """A connection back in the pool for PING_AFTER_IDLE_SECONDS is pinged at checkout, and a dead one
    replaced before the caller sees it. One handed back a moment ago is not (that ping cost a round
    trip per checkout): if it died meanwhile, the caller's statement fails, and the pool replaces
    it for the next one."""
    monkeypatch.setattr(herald_db, "PING_AFTER_IDLE_SECONDS", 0.0 if idle else 3600.0)
    with SessionLocal() as session:
        pid = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
    libpq = make_url(on_cluster.url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(libpq, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    with SessionLocal() as session:
        if idle:
            driver = session.connection().connection.driver_connection
            assert driver.info.transaction_status.name == "IDLE", "the ping left a transaction open"
            assert session.execute(text("SELECT pg_backend_pid()")).scalar_one() != pid
        else:
            with pytest.raises(OperationalError):
                session.execute(text("SELECT 1"))
    with SessionLocal() as session:
        assert session.execute(text("SELECT pg_backend_pid()")).scalar_one() != pid


def test_an_exhausted_pool_answers_503_instead_of_waiting(
    client, make_user, make_org, database_url, redis_url
):
    if not database_url.startswith("postgresql"):
        pytest.skip("row locks that hold connections are PostgreSQL's")
    alice = make_user("alice")
    org_id = make_org(alice)
    task = client.post(f"/api/orgs/{org_id}/tasks", json={"title": "Hot"}, headers=alice.headers).json()
    env = {"DATABASE_URL": database_url, "API_THREADS": "8", "DB_POOL_SIZE": "2", "DB_POOL_TIMEOUT": "1"}
    api = ApiServer(env, RUN_DIR / "api-small-pool.log", free_port()).start()
    libpq = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        with psycopg.connect(libpq) as holder, httpx.Client(base_url=api.url, timeout=10) as http:
            holder.execute("SELECT 1 FROM tasks WHERE id = %s FOR UPDATE", [task["id"]])
            change = {"status": "in_progress"}
            with ThreadPoolExecutor(6) as pool:
                pending = [
                    pool.submit(
                        timed, http.patch, f"/api/tasks/{task['id']}", json=change, headers=alice.headers
                    )
                    for _ in range(6)
                ]
                time.sleep(3)  # two hold the pool's connections, waiting for the row; the rest give up
                holder.rollback()
                answers = [future.result() for future in pending]
    finally:
        api.stop()
    codes = Counter(response.status_code for response, _seconds in answers)
    assert set(codes) <= {200, 503} and codes[503] >= 4, codes
    for response, seconds in answers:
        if response.status_code == 503:
            assert seconds < 2.5 and response.headers["Retry-After"] == "2"


def timed(call, *args, **kwargs):
    started = time.monotonic()
    response = call(*args, **kwargs)
    return response, time.monotonic() - started


def test_pooled_connections_are_opened_with_keepalives_and_a_tcp_user_timeout(on_cluster):
    """A partition leaves no reset to end a wait: libpq's keepalive probes (while a reply is awaited)
    and its TCP user timeout (while what was sent goes unacknowledged) bound it by DB_DEAD_PEER_SECONDS.
    This machine's kernel refuses the netem rules that would drop the packets, so the test reads what
    every pooled connection was opened with."""
    from src.config import settings

    with herald_db.engine.connect() as connection:
        params = connection.connection.driver_connection.info.get_parameters()
    idle, interval, count = (int(params[f"keepalives_{name}"]) for name in ("idle", "interval", "count"))
    probing = idle + interval * count
    assert params["keepalives"] == "1" and 0 < probing <= settings.db_dead_peer_seconds
    assert params["tcp_user_timeout"] == str(settings.db_dead_peer_seconds * 1000)


def test_task_tracebacks_of_one_outage_are_folded_into_one_line(caplog):
    import logging

    import redis
    from sqlalchemy.exc import IntegrityError

    from src import outages

    handler = logging.Handler()
    passed: list[logging.LogRecord] = []
    handler.emit = passed.append  # type: ignore[method-assign]
    logger = logging.getLogger("test.celery.task")
    logger.addHandler(handler)
    outages.fold_outage_tracebacks(logger)
    broker = outages.Outage("Redis")
    try:
        with pytest.MonkeyPatch.context() as patch, caplog.at_level(logging.ERROR, "herald.outages"):
            patch.setattr(outages, "broker", broker)
            for _ in range(50):
                try:
                    raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
                except redis.ConnectionError:
                    logger.exception("Task src.emails.tasks.email_tasks.send_email_async raised")
            try:
                raise IntegrityError("INSERT", {}, Exception("duplicate key"))
            except IntegrityError:
                logger.exception("a real bug")
    finally:
        logger.removeHandler(handler)
    task_lines = [r for r in passed if "send_email_async" in r.getMessage()]
    assert len(task_lines) == 1 and task_lines[0].exc_info is None  # said once, without the traceback
    assert [r.getMessage() for r in passed if r.exc_info] == ["a real bug"]  # other errors untouched
    said = [r.getMessage() for r in caplog.records if r.name == "herald.outages"]
    assert said[0].startswith("Redis is unavailable: ConnectionError: Error 111")
