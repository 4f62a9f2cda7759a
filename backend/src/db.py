"""The one engine and session factory, rebindable so tests can point Herald at their own database."""

import functools
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import anyio
from sqlalchemy import Connection, DateTime, Dialect, Engine, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.types import TypeDecorator

from src import outages
from src.config import settings
from src.relay import relay


class Base(DeclarativeBase):
    pass


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC and hands back aware UTC, so SQLite and PostgreSQL compare alike."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous; pass an aware UTC datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


SessionLocal = sessionmaker(expire_on_commit=False)
engine: Engine | None = None


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    # Herald issues BEGIN itself (below) instead of letting the driver guess.
    dbapi_connection.isolation_level = None  # type: ignore[attr-defined]
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin_immediate(connection: Connection) -> None:
    """Take SQLite's write lock up front: a read-then-write transaction racing a worker would
    otherwise fail at once with "database is locked" instead of waiting for busy_timeout."""
    connection.exec_driver_sql("BEGIN IMMEDIATE")


PING_AFTER_IDLE_SECONDS = 1.0


def _mark_used(_dbapi_connection: object, record: ConnectionPoolEntry, *_: object) -> None:
    record.info["used_at"] = time.monotonic()


def _ping_if_idle(
    dialect: Dialect, dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: object
) -> None:
    """SQLAlchemy's pre-ping, but only for a connection that sat idle in the pool: one handed back a
    moment ago has just proved itself, and pinging it cost a round trip per checkout (two per
    request). After a database restart, a connection dead since its last use fails its statement
    (503) and the pool then replaces every connection older than the failure."""
    if time.monotonic() - record.info.get("used_at", 0.0) < PING_AFTER_IDLE_SECONDS:
        return
    try:
        dialect.do_ping(dbapi_connection)  # outside a transaction: it leaves none open
    except Exception as exc:  # any failure: the pool discards this connection and makes a new one
        raise DisconnectionError(str(exc)) from exc


def configure_engine(url: str) -> Engine:
    """(Re)bind the session factory to `url`; the previous engine, if any, is disposed.

    The pool has room for every admitted request, the streams' lookups and the relay (DB_POOL_SIZE
    >= 2 x API_THREADS + 2; see src.admission), and a request uses at most one connection: no request
    waits for the pool. If one still has to (misconfiguration), it gives up after DB_POOL_TIMEOUT and
    answers 503.
    """
    global engine
    if engine is not None:
        engine.dispose()
    pool = {"pool_size": settings.db_pool_size, "max_overflow": 0, "pool_timeout": settings.db_pool_timeout}
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **pool)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin_immediate)
    else:
        connect_args = {"connect_timeout": settings.db_connect_timeout, **_dead_peer_detection()}
        # Last in, first out: under light load the same few connections stay warm (no ping) and the
        # rest idle.
        engine = create_engine(url, pool_use_lifo=True, connect_args=connect_args, **pool)
        for name in ("connect", "checkin"):
            event.listen(engine, name, _mark_used)
        event.listen(engine, "checkout", functools.partial(_ping_if_idle, engine.dialect))
    event.listen(engine, "connect", lambda *_: outages.database.ok())
    SessionLocal.configure(bind=engine)
    return engine


def _dead_peer_detection() -> dict[str, int]:
    """libpq's TCP settings that end a wait on a server that vanished: keepalive probes while a reply
    is awaited (the query was sent), and a limit on data left unacknowledged (it was not)."""
    seconds = settings.db_dead_peer_seconds
    idle, probes = max(1, seconds // 2), 3
    return {
        "keepalives": 1,
        "keepalives_idle": idle,
        "keepalives_interval": max(1, (seconds - idle) // probes),
        "keepalives_count": probes,
        "tcp_user_timeout": seconds * 1000,
    }


def outside_transaction(session: Session) -> Session:
    """Have the session's reads run outside a transaction, for a visit of reads that need no common
    snapshot: on PostgreSQL that saves BEGIN and ROLLBACK, two of a stream start's six round trips.
    Call it before the session's first query. SQLite keeps its transactions (they take its lock)."""
    if session.get_bind().dialect.name == "postgresql":
        session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        session.info["outside_transaction"] = session.get_transaction()
    return session


def _holds_transaction(session: Session) -> bool:
    """Whether closing the session sends a ROLLBACK: not when it read outside a transaction and has
    begun no other since."""
    current = session.get_transaction()
    return current is not None and current is not session.info.get("outside_transaction")


def insert_or_ignore(session: Session | Connection, target: Any) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING in the session's (or connection's) dialect: concurrent
    identical writes both succeed, once."""
    bind = session.get_bind() if isinstance(session, Session) else session
    return insert_or_ignore_in(bind.dialect.name, target)


@functools.cache
def insert_or_ignore_in(dialect_name: str, target: Any) -> Any:
    """`insert_or_ignore()` for a dialect by name, built once: statements are immutable, and callers
    derive theirs from it (`.values()`, `.returning()`)."""
    dialect_insert = postgresql.insert if dialect_name == "postgresql" else sqlite.insert
    return dialect_insert(target).on_conflict_do_nothing()


def insert_ignoring_duplicates(session: Session, table: Table, rows: list[dict[str, Any]]) -> int:
    statement = insert_or_ignore(session, table).values(rows)
    key = next(iter(table.primary_key.columns))
    return len(session.execute(statement.returning(key)).all())  # rows really inserted


async def get_session() -> AsyncIterator[Session]:
    """A request's session, made and, when it holds no connection, closed on the event loop: as a
    sync dependency with `yield` it cost each request two more hops to a worker thread, the first a
    wait for one of API_THREADS. One still in a transaction (a request that only read) is closed on a
    worker thread, as its ROLLBACK waits on the database: shielded, so a client that leaves cannot
    strand its connection, and outside API_THREADS, so it never waits for a request that waits for
    a connection. One that read outside a transaction has nothing to roll back and closes at once."""
    session = SessionLocal()
    try:
        yield session
    finally:
        if _holds_transaction(session):
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(close_quietly, session, limiter=anyio.CapacityLimiter(1))
        else:
            session.close()  # nothing to give back: no I/O


def close_quietly(session: Session) -> None:
    """If the database dropped the connection under the request (a restart), the closing ROLLBACK
    fails; there is nothing left to undo, so that is not the request's error (it would surface after
    the response as an ASGI traceback), and the dead connection is discarded."""
    try:
        session.close()
    except outages.DATABASE_ERRORS:  # a ROLLBACK fails only when the connection is gone
        session.invalidate()  # so the pool discards it instead of handing it out again


def after_commit(session: Session, callback: Callable[[], object], *, inline: bool = False) -> None:
    """Have the relay run `callback` once the session's current transaction commits; dropped on
    rollback. `inline` runs it on the committing thread instead, before the relay's callbacks: for
    bookkeeping that costs less than waking the relay (noting ids for the next wake-up).

    This is how the outbox publishes: rows are written in the caller's transaction, and the broker
    and streams only hear about them once they are durable, off the caller's thread.
    """
    session.info.setdefault("after_commit_inline" if inline else "after_commit", []).append(callback)


@event.listens_for(Session, "after_commit")
def _run_after_commit(session: Session) -> None:
    for callback in session.info.pop("after_commit_inline", ()):
        callback()
    callbacks = session.info.pop("after_commit", None)
    if callbacks:
        relay.submit(callbacks)


@event.listens_for(Session, "after_rollback")
def _drop_after_commit(session: Session) -> None:
    session.info.pop("after_commit_inline", None)
    session.info.pop("after_commit", None)


configure_engine(settings.database_url)
