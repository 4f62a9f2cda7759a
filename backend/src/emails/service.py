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
from datetime import timedelta
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.orm import Session

from src.auth.models import User
from src.config import settings
from src.db import SessionLocal, after_commit, utcnow
from src.emails.backends import Connection, DeliveryError, get_backend
from src.emails.models import EmailAttempt, EmailQueue, EmailStatus
from src.emails.rendering import one_line, render
from src.errors import Invalid
from src.orgs.models import Organization
from src.tasks.models import Task

log = logging.getLogger("herald.emails")


def _check_header(name: str, value: str) -> None:
    if "\r" in value or "\n" in value:
        raise Invalid(f"{name} must not contain CR or LF characters")


def _normalized_address(address: str) -> str:
    try:
        return validate_email(address, check_deliverability=False, allow_smtputf8=False).normalized
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
    ) -> EmailQueue:
        """Validate and add one email to the outbox in `session`'s transaction.

        Raises `Invalid` (and adds nothing) for a bad address, a header with CR/LF, an empty subject or
        an oversized body. A `dedupe_key` already queued returns the existing row instead.
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
        email = EmailQueue(
            org_id=org_id,
            to_email=to_email,
            to_name=to_name.strip(),
            subject=subject.strip(),
            body_text=body_text,
            body_html=body_html,
            message_id=f"<{uuid.uuid4().hex}@{_message_id_domain()}>",
            dedupe_key=dedupe_key,
            priority=priority,
            max_attempts=max_attempts or settings.email_max_attempts,
            next_attempt_at=utcnow(),
        )
        session.add(email)
        session.flush()
        email_id = email.id
        after_commit(session, lambda: publish_wakeup(email_id))
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
                    to_email=recipient.email,
                    to_name=one_line(recipient.name),
                    subject=one_line(f"[{org.name}] {task.title}: {old_status} → {new_status}", 300),
                    body_text=text,
                    body_html=html,
                    org_id=task.org_id,
                    dedupe_key=f"task-event:{event_id}:user:{recipient.id}",
                )
            )
        return queued


def publish_wakeup(email_id: int) -> None:
    """Tell a worker the email is waiting. If Redis is down the row still waits for the processor."""
    from src.emails.tasks.email_tasks import send_email_async

    try:
        send_email_async.delay(email_id)
    except Exception as exc:  # the broker is optional for correctness: log and move on
        log.warning("could not publish email %s (%s); the queue processor will send it", email_id, exc)


def build_message(email: EmailQueue) -> EmailMessage:
    message = EmailMessage()
    message["From"] = Address(settings.smtp_from_name, addr_spec=settings.smtp_from_email)
    message["To"] = Address(email.to_name, addr_spec=email.to_email)
    message["Subject"] = email.subject
    message["Message-ID"] = email.message_id
    message["Date"] = format_datetime(email.created_at)
    message.set_content(email.body_text, cte="quoted-printable")
    if email.body_html:
        message.add_alternative(email.body_html, subtype="html", cte="quoted-printable")
    return message


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
    expires_at_monotonic: float


def claim(session: Session, limit: int, email_ids: list[int] | None = None) -> Claim:
    """Atomically take up to `limit` due emails (only `email_ids`, when given) for this worker.

    One UPDATE picks the rows, locked with SKIP LOCKED on PostgreSQL (SQLite runs one writer at a
    time), and re-checks that each is still due, so a row is never owned by two claims.
    """
    now = utcnow()
    token = uuid.uuid4().hex
    candidates = select(EmailQueue.id).where(_due(now), EmailQueue.attempts < EmailQueue.max_attempts)
    if email_ids is not None:
        candidates = candidates.where(EmailQueue.id.in_(email_ids))
    candidates = (
        candidates.order_by(EmailQueue.priority.desc(), EmailQueue.next_attempt_at, EmailQueue.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    claimed = session.scalars(
        update(EmailQueue)
        .where(EmailQueue.id.in_(candidates), _due(now))
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
    # Stop sending well before the lease ends, so no one else can have reclaimed a row we still send.
    deadline = time.monotonic() + settings.email_lease_seconds * 0.8
    return Claim(token, sorted(claimed, key=lambda e: (-e.priority, e.id)), deadline)


def backoff_seconds(attempts: int) -> float:
    """Exponential backoff with jitter, so a recovering SMTP server is not hit by a thundering herd."""
    ceiling = min(
        settings.email_backoff_max_seconds, settings.email_backoff_base_seconds * 2 ** (attempts - 1)
    )
    return random.uniform(ceiling / 2, ceiling)


def _report(
    session: Session, email: EmailQueue, token: str, error: DeliveryError | None, started: float
) -> None:
    """Record one outcome, as soon as it is known: a crash then re-sends at most the message in flight."""
    now = utcnow()
    if error is None:
        outcome, values = "sent", {"status": EmailStatus.sent, "sent_at": now, "last_error": None}
    elif error.permanent or email.attempts >= email.max_attempts:
        outcome = "permanent" if error.permanent else "transient"
        values = {"status": EmailStatus.failed, "last_error": error.reason}
    else:
        outcome = "transient"
        retry_at = now + timedelta(seconds=backoff_seconds(email.attempts))
        values = {"status": EmailStatus.pending, "next_attempt_at": retry_at, "last_error": error.reason}
    result = session.execute(
        update(EmailQueue)
        .where(
            EmailQueue.id == email.id,
            EmailQueue.claim_token == token,
            EmailQueue.status == EmailStatus.sending,
        )
        .values(claim_token=None, lease_expires_at=None, updated_at=now, **values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount == 0:
        log.warning("email %s: claim expired before its outcome (%s) was recorded", email.id, outcome)
    session.execute(
        insert(EmailAttempt).values(
            email_id=email.id,
            attempt=email.attempts,
            outcome=outcome,
            smtp_code=error.code if error else 250,
            error=error.reason if error else None,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
            created_at=now,
        )
    )
    session.commit()


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


def send_claimed(session: Session, claim: Claim) -> int:
    """Send a claim's emails over one connection; returns how many were accepted."""
    backend = get_backend(settings)
    connection: Connection | None = None
    sent = 0
    try:
        for index, email in enumerate(claim.emails):
            if time.monotonic() > claim.expires_at_monotonic:
                _release(session, claim.emails[index:], claim.token)
                break
            started = time.perf_counter()
            error: DeliveryError | None = None
            try:
                if connection is None:
                    connection = backend.connect()
                connection.send(build_message(email))
            except DeliveryError as exc:
                error = exc
                if exc.broken and connection is not None:
                    connection.close()
                connection = None if exc.broken else connection
            _report(session, email, claim.token, error, started)
            if error is None:
                sent += 1
            elif error.broken and sent == 0 and index == 0:
                # The server cannot be reached at all: do not burn everyone's attempts on it.
                _release(session, claim.emails[1:], claim.token)
                break
    finally:
        if connection is not None:
            connection.close()
    return sent


@dataclass
class Delivery:
    claimed: int = 0
    sent: int = 0


def deliver(email_ids: list[int] | None = None, fill: bool = True) -> Delivery:
    """Claim and send: `email_ids` first, then (with `fill`) other due emails up to the batch size."""
    result = Delivery()
    with SessionLocal() as session:
        if email_ids:
            own = claim(session, len(email_ids), email_ids)
            result.claimed += len(own.emails)
            result.sent += send_claimed(session, own) if own.emails else 0
        if fill and result.claimed < settings.email_batch_size:
            others = claim(session, settings.email_batch_size - result.claimed)
            result.claimed += len(others.emails)
            result.sent += send_claimed(session, others) if others.emails else 0
    return result


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
        if delivery.claimed < settings.email_batch_size:
            break
        if batches == 1 and on_full_batch is not None:
            on_full_batch()
    return sent
