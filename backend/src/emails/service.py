"""The email outbox: queue in the caller's transaction, wake a worker after commit, repair.

Nothing here trusts Redis with state. A Celery message only says "look at the outbox"; claiming
(`claims.py`) and sending (`delivery.py`) work from the database alone.
"""

import logging
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime
from functools import cache, lru_cache
from typing import Any

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from src import outages
from src.config import settings
from src.db import after_commit, insert_or_ignore_in, utcnow
from src.emails.mime import compose_message
from src.emails.models import EmailQueue, EmailStatus
from src.errors import Invalid
from src.logs import current_request_id
from src.relay import Spaced
from src.text import visible

log = logging.getLogger("herald.emails")


def _check_header(name: str, value: str) -> None:
    if "\r" in value or "\n" in value:
        raise Invalid(f"{name} must not contain CR or LF characters")


@lru_cache(maxsize=4096)  # the same people are mailed again and again; validating costs
def normalized_address(address: str) -> str:
    """The address as SMTP can carry it without SMTPUTF8: a non-ASCII domain becomes punycode."""
    try:
        valid = validate_email(address, check_deliverability=False, allow_smtputf8=False)
        return valid.ascii_email or valid.normalized
    except EmailNotValidError as exc:
        raise Invalid(f"invalid recipient address {address!r}: {exc}") from None


def _message_id_domain() -> str:
    return settings.smtp_from_email.rpartition("@")[2] or "herald.local"


@dataclass
class EmailDraft:
    """One email to queue: what `EmailService.queue_email()` takes, for queueing many at once."""

    to_email: str
    subject: str
    body_text: str
    body_html: str | None = None
    to_name: str = ""
    org_id: int | None = None
    priority: int = 0
    dedupe_key: str | None = None
    max_attempts: int | None = None
    headers: dict[str, str] | None = None  # more headers, e.g. List-Unsubscribe; ASCII only


@dataclass(frozen=True)
class QueuedEmail:
    """An email in the outbox, as queueing it returns it."""

    id: int
    message_id: str
    mime: str
    created_at: datetime


_QUEUED_COLUMNS = (EmailQueue.id, EmailQueue.message_id, EmailQueue.mime, EmailQueue.created_at)


@cache
def _store(dialect_name: str) -> Any:
    """The outbox's INSERT, built once per dialect: built per call, with its cache key, it cost a
    queueing caller as much CPU as the INSERT's execution."""
    table = EmailQueue.__table__
    return insert_or_ignore_in(dialect_name, table).returning(table.c.message_id, table.c.id)


class EmailService:
    """Queue emails into the outbox. Callers own the transaction; publishing waits for its commit."""

    @staticmethod
    def queue_email(session: Session, *, wake_worker: bool = True, **draft: Any) -> QueuedEmail:
        """Validate and store one email in the outbox, in `session`'s transaction. Takes the fields
        of `EmailDraft` as keywords.

        Raises `Invalid` (and adds nothing) for a bad address, a header with CR/LF, an empty subject or
        an oversized body; drops bidi and zero-width characters from the subject and name. A
        `dedupe_key` already queued returns the existing email instead. `wake_worker=False` leaves the
        email to the queue processor (bulk loads, backfills).
        """
        [email] = EmailService.queue_emails(session, [EmailDraft(**draft)], wake_worker=wake_worker)
        return email

    @staticmethod
    def queue_emails(
        session: Session, drafts: list[EmailDraft], wake_worker: bool = True
    ) -> list[QueuedEmail]:
        """`queue_email()` for many, as the emails of one change, in one INSERT that skips the dedupe
        keys already queued (and returns those emails instead). Nothing is stored unless every draft
        is valid.

        A Core INSERT, not the ORM's: loading each new row back as an `EmailQueue` cost a queueing
        caller a third of its CPU, and no caller reads more than `QueuedEmail` holds.
        """
        rows = [_new_row(draft) for draft in drafts]
        if not rows:
            return []
        connection = session.connection()  # in the session's transaction; no ORM handling needed
        parameters = rows[0] if len(rows) == 1 else rows  # one row: no executemany machinery
        result = connection.execute(_store(connection.dialect.name), parameters)
        stored = {message_id: email_id for message_id, email_id in result}
        if wake_worker and stored:
            _wake_workers_after_commit(session, list(stored.values()))
        queued = [
            QueuedEmail(stored[row["message_id"]], row["message_id"], row["mime"], row["created_at"])
            if row["message_id"] in stored
            else None
            for row in rows
        ]
        duplicates = [row["dedupe_key"] for row, email in zip(rows, queued, strict=True) if email is None]
        if duplicates:
            existing = session.execute(
                select(EmailQueue.dedupe_key, *_QUEUED_COLUMNS).where(EmailQueue.dedupe_key.in_(duplicates))
            )
            by_key = {key: QueuedEmail(*columns) for key, *columns in existing}
            queued = [email or by_key[row["dedupe_key"]] for row, email in zip(rows, queued, strict=True)]
        return queued  # type: ignore[return-value]

    # --- repair: what an operator does from the CLI or an org admin from the API ----------------

    @staticmethod
    def retry(session: Session, email_ids: list[int] | None, org_id: int | None = None) -> list[int]:
        """Give failed, cancelled or suppressed emails a fresh set of attempts; `None` means every
        failed one. A suppressed email retried goes out if its address's suppression was lifted,
        and ends `suppressed` again if not.

        Returns the ids that changed. Only those states move, in one conditional UPDATE, so a retry
        can never touch an email being sent or already delivered.
        """
        retryable = (
            [EmailStatus.failed, EmailStatus.cancelled, EmailStatus.suppressed]
            if email_ids is not None
            else [EmailStatus.failed]
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
        _wake_workers_after_commit(session, changed)
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


def _new_row(draft: EmailDraft) -> dict[str, Any]:
    to_email = normalized_address(draft.to_email)
    _check_header("subject", draft.subject)
    _check_header("recipient name", draft.to_name)
    for name, value in (draft.headers or {}).items():
        _check_header(name, name + value)
        if not (name + value).isascii():
            raise Invalid(f"{name} must be ASCII")
    subject, to_name = visible(draft.subject).strip(), visible(draft.to_name).strip()
    if not subject:
        raise Invalid("subject must not be empty")
    if len(subject) > 998:
        raise Invalid("subject must be at most 998 characters")
    if not draft.body_text.strip():
        raise Invalid("the plain-text body must not be empty")
    size = len(draft.body_text.encode()) + len((draft.body_html or "").encode())
    if size > settings.email_max_body_bytes:
        raise Invalid(f"body is {size} bytes; the limit is {settings.email_max_body_bytes}")
    message_id = f"<{uuid.uuid4().hex}@{_message_id_domain()}>"
    now = utcnow()
    mime = compose_message(
        to_email, to_name, subject, draft.body_text, draft.body_html, message_id, now, draft.headers
    )
    return {
        "org_id": draft.org_id,
        "to_email": to_email,
        "to_name": to_name,
        "subject": subject,
        "mime": mime,
        "message_id": message_id,
        "dedupe_key": draft.dedupe_key,
        "priority": draft.priority,
        "max_attempts": draft.max_attempts or settings.email_max_attempts,
        "created_at": now,
        "next_attempt_at": now,
        "request_id": current_request_id(),
    }


def _wake_workers_after_commit(session: Session, email_ids: list[int]) -> None:
    """Once the transaction commits, these emails are owed a `send_email_async` message."""
    after_commit(session, lambda: _owe(email_ids), inline=True)
    after_commit(session, _spaced_wake_up)


_owed: list[int] = []  # committed emails no message has announced yet
_owed_lock = threading.Lock()  # committing threads add to it, the relay thread takes it


def _owe(email_ids: list[int]) -> None:
    with _owed_lock:
        _owed.extend(email_ids)


def _wake_workers() -> None:
    """One message per batch of owed emails, which a worker claims together and sends over one
    connection. The relay runs this once after all the commits it is handling, so a burst of
    changes costs a few messages, not one each."""
    from src.emails.tasks.email_tasks import send_email_async

    with _owed_lock:
        ids = _owed[:]
        _owed.clear()
    if not ids or outages.celery_broker.down:  # known down: do not wait for another refusal
        return
    try:
        for start in range(0, len(ids), settings.email_batch_size):
            batch = ids[start : start + settings.email_batch_size]
            send_email_async.delay(batch[0], batch[1:])
    except Exception as exc:  # the broker is optional for correctness: the processor sends them
        if outages.celery_broker.failed(exc):
            log.warning("%d email(s) not published; the queue processor will send them", len(ids))
        return
    outages.celery_broker.ok()


# A wake-up after a quiet spell goes at once; commits that follow within WAKE_SPACING_SECONDS share
# the next one. Publishing a Celery message took ~30 % of a serial queueing loop's CPU when every
# commit had its own, and each message costs a worker a few ms of CPU (receiving it, claiming,
# the suppression lookup) whatever it announces. At 100 ms, 40 changes/s cost the worker 3.7-4.7
# ms of CPU per change instead of 6.5-6.7 at 25 ms; an email under a steady load waits at most
# 100 ms more, nothing next to its delivery.
WAKE_SPACING_SECONDS = 0.1
_spaced_wake_up = Spaced(_wake_workers, WAKE_SPACING_SECONDS)
