"""Sending claimed emails and recording every outcome before the next message can be accepted.

A crash then re-sends at most the message in flight. An outcome the server accepted is never lost to
a database outage: its write is retried until the database answers again or the claim's lease is
about to end, and nothing new is sent meanwhile.

An email to a suppressed address is not sent but recorded `suppressed`, and a server's lasting
refusal of an address suppresses it, written with the outcome that records the refusal.
"""

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from sqlalchemy import Connection as DbConnection
from sqlalchemy import Engine, bindparam, exists, func, null, select
from sqlalchemy.dialects.postgresql import psycopg as postgresql_psycopg
from sqlalchemy.orm import Session

from src import outages
from src.config import settings
from src.db import SessionLocal, UTCDateTime, insert_or_ignore, utcnow
from src.emails.backends import Connection, DeliveryError, get_backend
from src.emails.claims import Claim, ClaimedEmail, backoff_seconds, claim, fail_abandoned, release, renew
from src.emails.connections import kept_connections
from src.emails.models import EmailAttempt, EmailQueue, EmailStatus, Suppression
from src.emails.suppressions import NewSuppression, Suppressed, address_key, suppressed_among

log = logging.getLogger("herald.emails")
_DATABASE_ERRORS = (*outages.DATABASE_ERRORS, psycopg.OperationalError, psycopg.InterfaceError)

_queue, _attempts, _suppressions = EmailQueue.__table__, EmailAttempt.__table__, Suppression.__table__
# Built once: these run once per email, and SQLAlchemy then reuses their compiled form.
_MARK = (
    _queue.update()
    .where(
        _queue.c.id == bindparam("email_id"),
        _queue.c.claim_token == bindparam("token"),
        _queue.c.status == bindparam("claimed_status", type_=_queue.c.status.type),
    )
    .values(
        status=bindparam("status", type_=_queue.c.status.type),
        sent_at=bindparam("sent_at", type_=UTCDateTime()),
        last_error=bindparam("last_error"),
        next_attempt_at=func.coalesce(bindparam("retry_at", type_=UTCDateTime()), _queue.c.next_attempt_at),
        claim_token=null(),
        lease_expires_at=null(),
        updated_at=bindparam("now", type_=UTCDateTime()),
    )
)
_ATTEMPT_COLUMNS = [
    "email_id", "attempt", "claim_token", "outcome", "smtp_code", "error", "duration_ms", "created_at",
]  # fmt: skip
_ATTEMPT_VALUES = [
    bindparam("email_id"),
    bindparam("attempt"),
    bindparam("token"),
    bindparam("outcome"),
    bindparam("smtp_code"),
    bindparam("last_error"),
    bindparam("duration_ms"),
    bindparam("now", type_=UTCDateTime()),
]
# Once per attempt, even when a write is retried because its answer was lost with the connection. An
# attempt is known by its claim, not its number: numbers start again when an operator retries.
_LOG_ATTEMPT = _attempts.insert().from_select(
    _ATTEMPT_COLUMNS,
    select(*_ATTEMPT_VALUES).where(
        ~exists().where(
            _attempts.c.email_id == bindparam("email_id"), _attempts.c.claim_token == bindparam("token")
        )
    ),
)
# PostgreSQL: both in one statement, so one round trip and atomic without BEGIN/COMMIT. Compiled
# once and run by psycopg as a prepared statement: SQLAlchemy's work per execution (cache key,
# parameter processing) cost this write more CPU than psycopg and PostgreSQL together.
_MARK_AND_LOG = str(
    select(func.count())
    .select_from(_MARK.returning(_queue.c.id).cte("marked"))
    .add_cte(_LOG_ATTEMPT.cte("logged"))
    .compile(dialect=postgresql_psycopg.dialect())
)


class AddressSuppressed(DeliveryError):
    """Not an error of the server's: the email was not sent, as its address is suppressed."""

    def __init__(self, suppression: Suppressed) -> None:
        since = suppression.created_at.isoformat(timespec="seconds")
        detail = f": {suppression.detail}" if suppression.detail else ""
        reason = f"not sent: the address is suppressed since {since} ({suppression.reason}{detail})"
        super().__init__(reason, permanent=True)


class OutcomeNotRecorded(Exception):
    """An earlier outcome could not be written: the next message must not be sent."""


class ClaimLost(Exception):
    """The claim's lease ran out and another worker holds the email now: this one must not send it."""


class OutcomeWriter:
    """Records each outcome while the next message's envelope is with the server: `wait()` runs once
    MAIL, RCPT and DATA are sent and before their replies are read, so the write overlaps that round
    trip, and always before the server may accept the message. A crash then still re-sends at most the
    message in flight."""

    def __init__(self, engine: Engine) -> None:
        self.recorder = OutcomeRecorder(engine)
        self.pending: list[tuple[int, dict[str, Any], float]] = []

    def submit(self, email: ClaimedEmail, token: str, error: DeliveryError | None, started: float,
               give_up_at: float) -> None:  # fmt: skip
        self.pending.append((email.id, _outcome(email, token, error, started), give_up_at))

    def wait(self) -> None:
        """Write every outcome submitted; raise `OutcomeNotRecorded` if one never was."""
        pending, self.pending = self.pending, []
        if not all([self.recorder.record(*write) for write in pending]):
            raise OutcomeNotRecorded

    def close(self) -> None:
        """Outcomes still pending are written even when sending ended in an error: the server took
        those messages."""
        try:
            with contextlib.suppress(OutcomeNotRecorded):
                self.wait()
        finally:
            self.recorder.close()


class OutcomeRecorder:
    """Writes outcomes on a connection of its own: on PostgreSQL in autocommit, as each write is one
    self-contained, conditional statement that is safe to repeat."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.connection: DbConnection | None = None

    def record(self, email_id: int, params: dict[str, Any], give_up_at: float) -> bool:
        """Record one outcome, retrying through a database outage until `give_up_at` (monotonic);
        False if the database never answered, and the outcome is lost with the lease."""
        delay, retried = 0.1, False
        while True:
            try:
                recorded = self._write(params)
                break
            except _DATABASE_ERRORS as exc:
                self.close(broken=True)
                outages.database.failed(exc)
                if time.monotonic() + delay > give_up_at:
                    log.error("email %s: outcome %r not recorded (no database within the lease); "
                              "it will be sent again", email_id, params["outcome"])  # fmt: skip
                    return False
                time.sleep(delay)
                delay, retried = min(delay * 2, 2.0), True
        if recorded == 0 and not retried:  # after a retry, the lost answer may have been a success
            log.warning("email %s: claim expired before its outcome (%s) was recorded",
                        email_id, params["outcome"])  # fmt: skip
        return True

    def _write(self, params: dict[str, Any]) -> int:
        if self.connection is None:
            self.connection = self.engine.connect()
            if self.connection.dialect.name == "postgresql":
                self.connection = self.connection.execution_options(isolation_level="AUTOCOMMIT")
        suppression = params["suppression"]
        if self.connection.dialect.name == "postgresql":
            # First, and as safe to repeat: if the outcome is lost, the retried email finds it.
            if suppression is not None:
                self.connection.execute(insert_or_ignore(self.connection, _suppressions), suppression)
            psycopg_connection = self.connection.connection.driver_connection
            naive = {key: _naive_utc(value) for key, value in params.items() if key != "suppression"}
            return psycopg_connection.execute(_MARK_AND_LOG, naive, prepare=True).fetchone()[0]
        with self.connection.begin():
            if suppression is not None:
                self.connection.execute(insert_or_ignore(self.connection, _suppressions), suppression)
            recorded = self.connection.execute(_MARK, params).rowcount
            self.connection.execute(_LOG_ATTEMPT, params)
            return recorded

    def close(self, broken: bool = False) -> None:
        if self.connection is not None:
            with contextlib.suppress(*_DATABASE_ERRORS):
                if broken:
                    self.connection.invalidate()  # not back into the pool
                self.connection.close()
            self.connection = None


def _naive_utc(value: Any) -> Any:
    """What `UTCDateTime` stores, for the statement psycopg runs without SQLAlchemy."""
    return value.astimezone(UTC).replace(tzinfo=None) if isinstance(value, datetime) else value


def _outcome(email: ClaimedEmail, token: str, error: DeliveryError | None, started: float) -> dict[str, Any]:
    now = utcnow()
    status, retry_at = EmailStatus.sent, None
    if error is None:
        outcome = "sent"
    elif isinstance(error, AddressSuppressed):
        outcome, status = "suppressed", EmailStatus.suppressed
    elif error.permanent or email.attempts >= email.max_attempts:
        outcome, status = ("permanent" if error.permanent else "transient"), EmailStatus.failed
    else:
        outcome, status = "transient", EmailStatus.pending
        retry_at = now + timedelta(seconds=backoff_seconds(email.attempts))
    return {
        "email_id": email.id,
        "token": token,
        "claimed_status": EmailStatus.sending,
        "status": status,
        "sent_at": now if error is None else None,
        "last_error": error.reason if error else None,
        "retry_at": retry_at,
        "now": now,
        "attempt": email.attempts,
        "outcome": outcome,
        "smtp_code": error.code if error else 250,
        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
        "suppression": _rejection(email, error),
    }


def _log_outcome(email: ClaimedEmail, error: DeliveryError | None) -> None:
    """One line per attempt, with the id of the request that queued the email: a status change can
    be followed from its request to the mail server's reply."""
    fields = {"email_id": email.id, "request_id": email.request_id}
    if error is None:
        log.info("email %s sent (attempt %d)", email.id, email.attempts, extra=fields)
    else:
        log.warning("email %s attempt %d failed: %s", email.id, email.attempts, error.reason, extra=fields)


def _rejection(email: ClaimedEmail, error: DeliveryError | None) -> dict[str, Any] | None:
    """The suppression a server's lasting refusal of the address calls for, if it was one."""
    if error is None or not error.bad_address:
        return None
    return NewSuppression(email.to_email, "rejected", error.reason).row()


@dataclass
class Delivery:
    claimed: int = 0
    sent: int = 0
    unreachable: bool = False  # the server, or the database, could not be reached: stop for now


def send_claimed(session: Session, claim: Claim) -> Delivery:
    """Send a claim's emails over one connection, kept afterwards for the process's next delivery."""
    backend = get_backend(settings)
    connection: Connection | None = None
    outcomes = OutcomeWriter(session.get_bind())  # type: ignore[arg-type]
    delivery = Delivery(claimed=len(claim.emails))
    margin = settings.email_lease_seconds * 0.1
    suppressed = suppressed_among(session, [e.to_email for e in claim.emails])
    session.commit()  # not a transaction left open while sending
    reached_server = False  # the server replied to this batch (an unsent, suppressed email does not count)

    def before_accept() -> None:
        """The previous outcome is written, and the lease still holds for the email being sent (the
        loop's `index`): making a new connection can take long enough (timeouts) to outlive it."""
        outcomes.wait()
        if not _lease_kept(session, claim, index):
            raise ClaimLost

    try:
        for index, email in enumerate(claim.emails):
            if not _lease_kept(session, claim, index):
                break
            started = time.perf_counter()
            error: DeliveryError | None = None
            suppression = suppressed.get(address_key(email.to_email))
            try:
                if suppression is not None:
                    raise AddressSuppressed(suppression)
                if connection is None:
                    connection = kept_connections.take(backend, settings.smtp_idle_seconds)
                connection.send(settings.smtp_from_email, email.to_email, email.mime.encode("ascii"),
                                before_accept=before_accept)  # fmt: skip
                reached_server = True
            except DeliveryError as exc:
                error = exc
                if not exc.broken and suppression is None:
                    reached_server = True  # it answered, if only to refuse
                if exc.broken and connection is not None:
                    connection.close()
                connection = None if exc.broken else connection
            outcomes.submit(email, claim.token, error, started, claim.lease_ends - margin)
            _log_outcome(email, error)
            rejection = _rejection(email, error)
            if rejection is not None:  # the rest of this batch to that address is suppressed too
                suppressed[rejection["email"]] = Suppressed(**rejection)
            if error is None:
                delivery.sent += 1
            elif error.broken and not reached_server:
                # The server cannot be reached at all: do not burn everyone's attempts on it.
                release(session, claim.emails[index + 1 :], claim.token)
                delivery.unreachable = True
                break
        outcomes.wait()
    except (OutcomeNotRecorded, ClaimLost) as exc:
        # The message held mid-DATA is dropped with its connection. The database is gone, and the
        # rest stay claimed until their lease ends; or the rest are another worker's now.
        if connection is not None:
            connection.close()
        connection = None
        delivery.unreachable = isinstance(exc, OutcomeNotRecorded)
    except BaseException:
        if connection is not None:
            connection.close()  # it may be in the middle of a message
        raise
    finally:
        outcomes.close()
    if connection is not None:
        kept_connections.give_back(backend, connection, settings.smtp_idle_seconds)
    return delivery


def _lease_kept(session: Session, claim: Claim, next_unsent: int) -> bool:
    """Past half the lease, renew it for the emails not yet sent (from `next_unsent` on); False (and
    those still ours handed back) if another worker took any of them meanwhile."""
    if not claim.renewal_due or renew(session, claim, claim.emails[next_unsent:]):
        return True
    release(session, claim.emails[next_unsent:], claim.token)
    return False


def deliver(
    email_ids: list[int] | None = None, fill: bool = True, on_full_claim: Callable[[], None] | None = None
) -> Delivery:
    """Claim and send, over one connection: `email_ids` first, then (with `fill`) other due emails
    up to the batch size. `on_full_claim` is called before sending if the claim took a full batch."""
    with SessionLocal() as session:
        if fill:
            batch = claim(session, settings.email_batch_size, first=email_ids)
        else:
            batch = claim(session, len(email_ids or ()), only=email_ids or [])
        if on_full_claim is not None and len(batch.emails) >= settings.email_batch_size:
            on_full_claim()
        return send_claimed(session, batch) if batch.emails else Delivery()


def process_queue(time_budget: float | None = None, on_backlog: Callable[[], None] | None = None) -> int:
    """Send due emails batch after batch until none is due or the time budget is spent.

    `on_backlog` is called once, as soon as the first claim comes back full: the caller's cue to
    start helpers, which then share the backlog from its first batch on.
    """
    budget = time_budget if time_budget is not None else max(settings.email_queue_interval * 0.8, 1.0)
    deadline = time.monotonic() + budget
    with SessionLocal() as session:
        fail_abandoned(session)
    sent = 0
    first = True
    while time.monotonic() < deadline:
        delivery = deliver(on_full_claim=on_backlog if first else None)
        sent += delivery.sent
        first = False
        # A short batch may only mean another drainer took rows first; an unreachable server gets
        # no more tries (each would cost an email an attempt) until the next run.
        if delivery.claimed == 0 or delivery.unreachable:
            break
    return sent
