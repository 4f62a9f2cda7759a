"""The email outbox: queue in the caller's transaction, claim atomically, send, record every outcome.

Nothing here trusts Redis with state. A Celery message only says "look at the outbox"; whoever wins
the conditional UPDATE that moves a row to `sending` owns it until its lease expires, and reports the
outcome with another conditional UPDATE that only the same claim can make.
"""

import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.charset import QP, Charset
from email.header import Header
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import compat32
from email.utils import format_datetime, formataddr

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import Connection as DbConnection
from sqlalchemy import and_, bindparam, func, or_, select, update
from sqlalchemy.orm import Session

from src.auth.models import User
from src.config import settings
from src.db import SessionLocal, UTCDateTime, after_commit, utcnow
from src.emails.backends import Connection, DeliveryError, get_backend
from src.emails.models import EmailAttempt, EmailQueue, EmailStatus
from src.emails.rendering import render
from src.errors import Invalid
from src.orgs.models import Organization
from src.tasks.models import Task
from src.text import one_line

log = logging.getLogger("herald.emails")


def _check_header(name: str, value: str) -> None:
    if "\r" in value or "\n" in value:
        raise Invalid(f"{name} must not contain CR or LF characters")


def _normalized_address(address: str) -> str:
    """The address as SMTP can carry it without SMTPUTF8: a non-ASCII domain becomes punycode."""
    try:
        valid = validate_email(address, check_deliverability=False, allow_smtputf8=False)
        return valid.ascii_email or valid.normalized
    except EmailNotValidError as exc:
        raise Invalid(f"invalid recipient address {address!r}: {exc}") from None


def _message_id_domain() -> str:
    return settings.smtp_from_email.rpartition("@")[2] or "herald.local"


class EmailService:
    """Queue emails into the outbox. Callers own the transaction; publishing waits for its commit."""

    @staticmethod
    def queue_email(
        session: Session,
        *,
        to_email: str,
        subject: str,
        body_text: str,
        body_html: str | None = None,
        to_name: str = "",
        org_id: int | None = None,
        priority: int = 0,
        dedupe_key: str | None = None,
        max_attempts: int | None = None,
        wake_worker: bool = True,
    ) -> EmailQueue:
        """Validate and add one email to the outbox in `session`'s transaction.

        Raises `Invalid` (and adds nothing) for a bad address, a header with CR/LF, an empty subject or
        an oversized body. A `dedupe_key` already queued returns the existing row instead.
        `wake_worker=False` leaves the email to the queue processor (bulk loads, backfills).
        """
        to_email = _normalized_address(to_email)
        _check_header("subject", subject)
        _check_header("recipient name", to_name)
        if not subject.strip():
            raise Invalid("subject must not be empty")
        if len(subject) > 998:
            raise Invalid("subject must be at most 998 characters")
        if not body_text.strip():
            raise Invalid("the plain-text body must not be empty")
        size = len(body_text.encode()) + len((body_html or "").encode())
        if size > settings.email_max_body_bytes:
            raise Invalid(f"body is {size} bytes; the limit is {settings.email_max_body_bytes}")
        if dedupe_key is not None:
            existing = session.scalar(select(EmailQueue).where(EmailQueue.dedupe_key == dedupe_key))
            if existing is not None:
                return existing
        to_name, subject = to_name.strip(), subject.strip()
        message_id = f"<{uuid.uuid4().hex}@{_message_id_domain()}>"
        now = utcnow()
        email = EmailQueue(
            org_id=org_id,
            to_email=to_email,
            to_name=to_name,
            subject=subject,
            mime=compose_message(to_email, to_name, subject, body_text, body_html, message_id, now),
            message_id=message_id,
            dedupe_key=dedupe_key,
            priority=priority,
            max_attempts=max_attempts or settings.email_max_attempts,
            created_at=now,
            next_attempt_at=now,
        )
        session.add(email)
        session.flush()
        if wake_worker:
            _Wakeups.for_session(session).email_ids.append(email.id)
        return email

    @staticmethod
    def queue_status_change_emails(
        session: Session,
        task: Task,
        actor: User,
        recipients: list[User],
        old_status: str,
        new_status: str,
        event_id: int,
    ) -> list[EmailQueue]:
        """One email per recipient, in the status change's transaction; a replay queues nothing new."""
        org = session.get_one(Organization, task.org_id)
        task_url = f"{settings.public_base_url.rstrip('/')}/api/tasks/{task.id}"
        queued = []
        for recipient in recipients:
            try:
                to_email = _normalized_address(recipient.email)
            except Invalid as exc:  # one unreachable address must not block the status change
                log.warning("no status email for user %s: %s", recipient.id, exc.detail)
                continue
            text, html = render(
                "task_status_changed",
                recipient_name=recipient.name,
                actor_name=actor.name,
                task_title=task.title,
                old_status=old_status,
                new_status=new_status,
                task_url=task_url,
                org_name=org.name,
            )
            queued.append(
                EmailService.queue_email(
                    session,
                    to_email=to_email,
                    to_name=one_line(recipient.name),
                    subject=one_line(f"[{org.name}] {task.title}: {old_status} → {new_status}", 300),
                    body_text=text,
                    body_html=html,
                    org_id=task.org_id,
                    dedupe_key=f"task-event:{event_id}:user:{recipient.id}",
                )
            )
        return queued

    # --- repair: what an operator does from the CLI or an org admin from the API ----------------

    @staticmethod
    def retry(session: Session, email_ids: list[int] | None, org_id: int | None = None) -> list[int]:
        """Give failed or cancelled emails a fresh set of attempts; `None` means every failed one.

        Returns the ids that changed. Only those states move, in one conditional UPDATE, so a retry
        can never touch an email being sent or already delivered.
        """
        retryable = (
            [EmailStatus.failed, EmailStatus.cancelled] if email_ids is not None else [EmailStatus.failed]
        )
        query = update(EmailQueue).where(EmailQueue.status.in_(retryable))
        if email_ids is not None:
            query = query.where(EmailQueue.id.in_(email_ids))
        if org_id is not None:
            query = query.where(EmailQueue.org_id == org_id)
        now = utcnow()
        changed = list(
            session.scalars(
                query.values(status=EmailStatus.pending, attempts=0, next_attempt_at=now, updated_at=now)
                .returning(EmailQueue.id)
                .execution_options(synchronize_session=False)
            )
        )
        _Wakeups.for_session(session).email_ids.extend(changed)
        session.commit()
        return changed

    @staticmethod
    def cancel(session: Session, email_ids: list[int], org_id: int | None = None) -> list[int]:
        """Stop pending emails from being sent; an email already being sent cannot be recalled."""
        query = update(EmailQueue).where(
            EmailQueue.status == EmailStatus.pending, EmailQueue.id.in_(email_ids)
        )
        if org_id is not None:
            query = query.where(EmailQueue.org_id == org_id)
        changed = list(
            session.scalars(
                query.values(status=EmailStatus.cancelled, updated_at=utcnow())
                .returning(EmailQueue.id)
                .execution_options(synchronize_session=False)
            )
        )
        session.commit()
        return changed

    @staticmethod
    def stats(session: Session, org_id: int | None = None) -> dict[str, int]:
        """How many emails are in each status."""
        query = select(EmailQueue.status, func.count()).group_by(EmailQueue.status)
        if org_id is not None:
            query = query.where(EmailQueue.org_id == org_id)
        counts = {status.value: 0 for status in EmailStatus}
        counts.update({status.value: count for status, count in session.execute(query)})
        return counts

    @staticmethod
    def listing(
        session: Session, status: EmailStatus | None, limit: int, offset: int = 0, org_id: int | None = None
    ) -> list[EmailQueue]:
        query = select(EmailQueue)
        if status is not None:
            query = query.where(EmailQueue.status == status)
        if org_id is not None:
            query = query.where(EmailQueue.org_id == org_id)
        return list(session.scalars(query.order_by(EmailQueue.id.desc()).limit(limit).offset(offset)))


class _Wakeups:
    """The `send_email_async` messages a transaction owes once it commits, one per email.

    If Redis refuses the first, the rest are not tried: each try can take a second or two, and the
    queue processor sends those emails anyway.
    """

    def __init__(self) -> None:
        self.email_ids: list[int] = []

    @classmethod
    def for_session(cls, session: Session) -> "_Wakeups":
        for callback in session.info.get("after_commit", []):
            if isinstance(callback, cls):
                return callback
        wakeups = cls()
        after_commit(session, wakeups)
        return wakeups

    def __call__(self) -> None:
        from src.emails.tasks.email_tasks import send_email_async

        for index, email_id in enumerate(self.email_ids):
            try:
                send_email_async.delay(email_id)
            except Exception as exc:  # the broker is optional for correctness: log and move on
                waiting = len(self.email_ids) - index
                log.warning(
                    "could not publish %d email(s) (%s); the queue processor will send them", waiting, exc
                )
                return


_SMTP_COMPAT32 = compat32.clone(linesep="\r\n")  # SMTP wants CRLF; smtplib does not fix bytes
_UTF8_QP = Charset("utf-8")
_UTF8_QP.header_encoding = QP
_UTF8_QP.body_encoding = QP


def _header(value: str) -> str:
    return value if value.isascii() else Header(value, _UTF8_QP).encode()


def compose_message(
    to_email: str,
    to_name: str,
    subject: str,
    body_text: str,
    body_html: str | None,
    message_id: str,
    date: datetime,
) -> str:
    """The MIME message exactly as it will be sent: 7-bit clean, RFC 2047 headers where needed.

    Composed once, when queued, so every retry sends the same bytes and the send path does no
    rendering. Built with the `email.mime` classes, four times faster than `EmailMessage`.
    """
    message = MIMEMultipart("alternative") if body_html else MIMEText(body_text, "plain", _UTF8_QP)
    if body_html:
        message.attach(MIMEText(body_text, "plain", _UTF8_QP))
        message.attach(MIMEText(body_html, "html", _UTF8_QP))
    message["From"] = formataddr((settings.smtp_from_name, settings.smtp_from_email), charset="utf-8")
    message["To"] = formataddr((to_name, to_email), charset="utf-8")
    message["Subject"] = _header(subject)
    message["Message-ID"] = message_id
    message["Date"] = format_datetime(date)
    return message.as_string(policy=_SMTP_COMPAT32)


# --- claiming ---------------------------------------------------------------------------------


def _due(now: object) -> object:
    return or_(
        and_(EmailQueue.status == EmailStatus.pending, EmailQueue.next_attempt_at <= now),
        and_(EmailQueue.status == EmailStatus.sending, EmailQueue.lease_expires_at < now),
    )


@dataclass
class Claim:
    token: str
    emails: list[EmailQueue]
    renew_at_monotonic: float  # half the lease: past it, the emails not yet sent get a fresh lease


def claim(
    session: Session, limit: int, only: list[int] | None = None, first: list[int] | None = None
) -> Claim:
    """Atomically take up to `limit` due emails for this worker: only those in `only` when given,
    and those in `first` ahead of the rest.

    One statement picks and updates the rows. On PostgreSQL the picking SELECT locks them with SKIP
    LOCKED, and re-checks a row changed under it before locking it; SQLite runs one writer at a time.
    Either way a row is never owned by two claims.
    """
    # Counted from before the statement, which may wait for a lock.
    renew_at = time.monotonic() + settings.email_lease_seconds / 2
    now = utcnow()
    token = uuid.uuid4().hex
    candidates = select(EmailQueue.id).where(_due(now), EmailQueue.attempts < EmailQueue.max_attempts)
    if only is not None:
        candidates = candidates.where(EmailQueue.id.in_(only))
    order = [EmailQueue.priority.desc(), EmailQueue.next_attempt_at, EmailQueue.id]
    if first:
        order.insert(0, EmailQueue.id.in_(first).desc())
    # A materialized CTE runs the locking SELECT exactly once. As `id IN (subquery)` PostgreSQL may
    # re-run it per outer row, and with SKIP LOCKED every run picks new rows: one claim takes all.
    picked = (
        candidates.order_by(*order)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .cte("picked")
        .prefix_with("MATERIALIZED", dialect="postgresql")
    )
    claimed = session.scalars(
        update(EmailQueue)
        .where(EmailQueue.id == picked.c.id)
        .values(
            status=EmailStatus.sending,
            claim_token=token,
            lease_expires_at=now + timedelta(seconds=settings.email_lease_seconds),
            attempts=EmailQueue.attempts + 1,
            updated_at=now,
        )
        .returning(EmailQueue)
        .execution_options(synchronize_session=False)
    ).all()
    session.commit()
    return Claim(token, sorted(claimed, key=lambda e: (-e.priority, e.id)), renew_at)


def backoff_seconds(attempts: int) -> float:
    """Exponential backoff with jitter, so a recovering SMTP server is not hit by a thundering herd."""
    ceiling = min(
        settings.email_backoff_max_seconds, settings.email_backoff_base_seconds * 2 ** (attempts - 1)
    )
    return random.uniform(ceiling / 2, ceiling)


def _outcome_connection(session: Session) -> DbConnection:
    """Where outcomes are written: on PostgreSQL in autocommit, as each is one self-contained statement."""
    connection = session.get_bind().connect()
    if connection.dialect.name == "postgresql":
        connection = connection.execution_options(isolation_level="AUTOCOMMIT")
    return connection


_queue, _attempts = EmailQueue.__table__, EmailAttempt.__table__
# Built once: these run once per email, and SQLAlchemy then reuses their compiled form.
_MARK = (
    _queue.update()
    .where(
        _queue.c.id == bindparam("email_id"),
        _queue.c.claim_token == bindparam("token"),
        _queue.c.status == EmailStatus.sending,
    )
    .values(
        status=bindparam("status", type_=_queue.c.status.type),
        sent_at=bindparam("sent_at", type_=UTCDateTime()),
        last_error=bindparam("last_error"),
        next_attempt_at=func.coalesce(bindparam("retry_at", type_=UTCDateTime()), _queue.c.next_attempt_at),
        claim_token=None,
        lease_expires_at=None,
        updated_at=bindparam("now", type_=UTCDateTime()),
    )
)
_LOG_ATTEMPT = _attempts.insert().values(
    email_id=bindparam("email_id"),
    attempt=bindparam("attempt"),
    outcome=bindparam("outcome"),
    smtp_code=bindparam("smtp_code"),
    error=bindparam("last_error"),
    duration_ms=bindparam("duration_ms"),
    created_at=bindparam("now", type_=UTCDateTime()),
)
# PostgreSQL: both in one statement, so one round trip and atomic without BEGIN/COMMIT.
_MARK_AND_LOG = (
    select(func.count())
    .select_from(_MARK.returning(_queue.c.id).cte("marked"))
    .add_cte(_LOG_ATTEMPT.cte("logged"))
)


def _report(
    connection: DbConnection, email: EmailQueue, token: str, error: DeliveryError | None, started: float
) -> None:
    """Record one outcome, as soon as it is known: a crash then re-sends at most the message in flight."""
    now = utcnow()
    status, retry_at = EmailStatus.sent, None
    if error is None:
        outcome = "sent"
    elif error.permanent or email.attempts >= email.max_attempts:
        outcome, status = ("permanent" if error.permanent else "transient"), EmailStatus.failed
    else:
        outcome, status = "transient", EmailStatus.pending
        retry_at = now + timedelta(seconds=backoff_seconds(email.attempts))
    params = {
        "email_id": email.id,
        "token": token,
        "status": status,
        "sent_at": now if error is None else None,
        "last_error": error.reason if error else None,
        "retry_at": retry_at,
        "now": now,
        "attempt": email.attempts,
        "outcome": outcome,
        "smtp_code": error.code if error else 250,
        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
    }
    if connection.dialect.name == "postgresql":
        recorded = connection.execute(_MARK_AND_LOG, params).scalar_one()
    else:
        with connection.begin():
            recorded = connection.execute(_MARK, params).rowcount
            connection.execute(_LOG_ATTEMPT, params)
    if recorded == 0:
        log.warning("email %s: claim expired before its outcome (%s) was recorded", email.id, outcome)


def _release(session: Session, emails: list[EmailQueue], token: str) -> None:
    """Hand back claimed emails that were not tried, without counting an attempt."""
    if not emails:
        return
    session.execute(
        update(EmailQueue)
        .where(EmailQueue.id.in_([e.id for e in emails]), EmailQueue.claim_token == token)
        .values(
            status=EmailStatus.pending,
            attempts=EmailQueue.attempts - 1,
            claim_token=None,
            lease_expires_at=None,
            updated_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )
    session.commit()


def _renew(session: Session, emails: list[EmailQueue], token: str) -> bool:
    """A fresh lease for emails still to be sent, so a long batch never outlives its claim;
    False if any of them is no longer ours."""
    now = utcnow()
    result = session.execute(
        update(EmailQueue)
        .where(
            EmailQueue.id.in_([e.id for e in emails]),
            EmailQueue.claim_token == token,
            EmailQueue.status == EmailStatus.sending,
        )
        .values(lease_expires_at=now + timedelta(seconds=settings.email_lease_seconds), updated_at=now)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount == len(emails)


@dataclass
class Delivery:
    claimed: int = 0
    sent: int = 0
    unreachable: bool = False  # the first send could not reach the server: stop trying for now


def send_claimed(session: Session, claim: Claim) -> Delivery:
    """Send a claim's emails over one connection."""
    backend = get_backend(settings)
    connection: Connection | None = None
    outcomes = _outcome_connection(session)
    delivery = Delivery(claimed=len(claim.emails))
    try:
        for index, email in enumerate(claim.emails):
            if time.monotonic() > claim.renew_at_monotonic:
                if not _renew(session, claim.emails[index:], claim.token):
                    _release(session, claim.emails[index:], claim.token)
                    break
                claim.renew_at_monotonic = time.monotonic() + settings.email_lease_seconds / 2
            started = time.perf_counter()
            error: DeliveryError | None = None
            try:
                if connection is None:
                    connection = backend.connect()
                connection.send(settings.smtp_from_email, email.to_email, email.mime.encode("ascii"))
            except DeliveryError as exc:
                error = exc
                if exc.broken and connection is not None:
                    connection.close()
                connection = None if exc.broken else connection
            _report(outcomes, email, claim.token, error, started)
            if error is None:
                delivery.sent += 1
            elif error.broken and index == 0:
                # The server cannot be reached at all: do not burn everyone's attempts on it.
                _release(session, claim.emails[1:], claim.token)
                delivery.unreachable = True
                break
    finally:
        outcomes.close()
        if connection is not None:
            connection.close()
    return delivery


def deliver(email_ids: list[int] | None = None, fill: bool = True) -> Delivery:
    """Claim and send, over one connection: `email_ids` first, then (with `fill`) other due emails
    up to the batch size."""
    with SessionLocal() as session:
        if fill:
            batch = claim(session, settings.email_batch_size, first=email_ids)
        else:
            batch = claim(session, len(email_ids or ()), only=email_ids or [])
        return send_claimed(session, batch) if batch.emails else Delivery()


def fail_abandoned(session: Session) -> int:
    """Emails whose last allowed attempt died with its worker: failed, with the reason."""
    now = utcnow()
    result = session.execute(
        update(EmailQueue)
        .where(
            EmailQueue.status == EmailStatus.sending,
            EmailQueue.lease_expires_at < now,
            EmailQueue.attempts >= EmailQueue.max_attempts,
        )
        .values(
            status=EmailStatus.failed,
            claim_token=None,
            lease_expires_at=None,
            last_error="the worker sending the last allowed attempt stopped before reporting its outcome",
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount


def process_queue(time_budget: float | None = None, on_full_batch: Callable[[], None] | None = None) -> int:
    """Send due emails batch after batch until none is due or the time budget is spent.

    `on_full_batch` is called once, if the first batch was full: the caller's cue to start helpers.
    """
    budget = time_budget if time_budget is not None else max(settings.email_queue_interval * 0.8, 1.0)
    deadline = time.monotonic() + budget
    with SessionLocal() as session:
        fail_abandoned(session)
    sent = 0
    batches = 0
    while time.monotonic() < deadline:
        delivery = deliver()
        sent += delivery.sent
        batches += 1
        # A short batch may only mean another drainer took rows first; an unreachable server gets
        # no more tries (each would cost an email an attempt) until the next run.
        if delivery.claimed == 0 or delivery.unreachable:
            break
        if batches == 1 and delivery.claimed >= settings.email_batch_size and on_full_batch is not None:
            on_full_batch()
    return sent
