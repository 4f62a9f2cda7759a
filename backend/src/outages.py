"""Outages of PostgreSQL and Redis: said once with the reason, then at backed-off intervals.

A database restart used to fill the workers' logs with hundreds of identical tracebacks. Each
dependency has one `Outage` per process; whoever sees a connection failure reports it there, and the
log filter folds the tracebacks of tasks that failed for the same reason into it. The Redis outage
also works as a breaker: while it is known down, best-effort publishes are skipped instead of each
waiting for a refusal (the database holds everything they would have said).
"""

import logging
import threading
import time

import redis
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy import exc as sa_exc

from src.config import settings

log = logging.getLogger("herald.outages")

FIRST_REMINDER = 1.0  # seconds until the first "still down" line; doubles up to LAST_REMINDER
LAST_REMINDER = 60.0
QUIET_FOR_RECOVERY = 30.0  # a failure after this long without one is a new outage


class Outage:
    def __init__(self, dependency: str, breaker_seconds: float = 0.0) -> None:
        self.dependency = dependency
        self.breaker_seconds = breaker_seconds
        self._lock = threading.Lock()
        self._down = False
        self._last_failure = 0.0
        self._next_line = 0.0
        self._reminder = FIRST_REMINDER
        self._suppressed = 0
        self._open_until = 0.0

    @property
    def down(self) -> bool:
        """True while the breaker is open: skip what only helps and would wait for a refusal."""
        return time.monotonic() < self._open_until

    def failed(self, exc: BaseException, trip_breaker: bool = True) -> bool:
        """Count one failure; True if it is time to say so (this record may be logged).
        `trip_breaker=False` for failures of a long-lived connection that is being re-established,
        which say little about whether the next publish would go through."""
        now = time.monotonic()
        with self._lock:
            if trip_breaker:
                self._open_until = now + self.breaker_seconds
            new_outage = not self._down or now - self._last_failure > QUIET_FOR_RECOVERY
            self._last_failure = now
            if new_outage:
                self._down, self._reminder, self._suppressed = True, FIRST_REMINDER, 0
                self._next_line = now + self._reminder
                log.error("%s is unavailable: %s", self.dependency, _reason(exc))
                return True
            if now < self._next_line:
                self._suppressed += 1
                return False
            suppressed, self._suppressed = self._suppressed, 0
            self._reminder = min(self._reminder * 2, LAST_REMINDER)
            self._next_line = now + self._reminder
        log.error("%s is still unavailable (%d failures since the last line): %s",
                  self.dependency, suppressed + 1, _reason(exc))  # fmt: skip
        return False

    def ok(self) -> None:
        """A call went through: the outage, if any, is over."""
        if not self._down:
            return
        with self._lock:
            if not self._down:
                return
            self._down, self._open_until = False, 0.0
            suppressed, self._suppressed = self._suppressed, 0
        log.warning("%s is available again (%d failures not logged)", self.dependency, suppressed)


database = Outage("the database")
broker = Outage("Redis", breaker_seconds=2.0)  # Redis: live fan-out, rate limits and (by default) Celery
# Publishing Celery tasks: Redis's outage, unless CELERY_BROKER_URL names a broker of its own (RabbitMQ),
# whose outage must neither turn rate limits off nor be turned off by Redis's.
celery_broker = Outage("the Celery broker", breaker_seconds=2.0) if settings.celery_broker_url else broker
pool = Outage("a pooled database connection")

DATABASE_ERRORS = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError)
_REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError)


def outage_of(exc: BaseException | None) -> Outage | None:
    """Which dependency an error says is unreachable, looking through wrapped causes."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, DATABASE_ERRORS) or type(exc).__module__.startswith("psycopg"):
            return database if _is_connection_error(exc) else None
        if isinstance(exc, _REDIS_ERRORS):
            return broker
        if isinstance(exc, KombuOperationalError):
            return celery_broker
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def _is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    text = str(exc).lower()
    return isinstance(exc, sa_exc.DisconnectionError) or any(
        marker in text
        for marker in (
            "connection refused", "could not connect", "terminating connection", "server closed",
            "connection is closed", "the connection is lost", "administrator command", "timeout",
            "connection failed", "consuming input failed", "no connection to the server",
            "connection socket closed",
        )
    )  # fmt: skip


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


class FoldOutageTracebacks(logging.Filter):
    """Records whose exception says PostgreSQL or Redis is unreachable: the first of an outage keeps
    its message without the traceback (the outage's own line says why), the others are only counted
    in the outage's next line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        outage = outage_of(exc)
        if outage is None or exc is None:
            return True
        if not outage.failed(exc):
            return False
        record.exc_info, record.exc_text = None, None
        return True


def fold_outage_tracebacks(*loggers: logging.Logger) -> None:
    """Install the filter on the handlers of `loggers` (and of the root logger), once each."""
    for logger in (*loggers, logging.getLogger()):
        for handler in logger.handlers:
            if not any(isinstance(f, FoldOutageTracebacks) for f in handler.filters):
                handler.addFilter(FoldOutageTracebacks())
