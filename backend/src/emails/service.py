"""The email outbox: queue in the caller's transaction, wake a worker after commit, repair.

Nothing here trusts Redis with state. A Celery message only says "look at the outbox"; claiming
(`claims.py`) and sending (`delivery.py`) work from the database alone.
"""

import logging
import uuid

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from src import outages
from src.config import settings
from src.db import after_commit, utcnow
from src.emails.mime import compose_message
from src.emails.models import EmailQueue, EmailStatus
from src.errors import Invalid

log = logging.getLogger("herald.emails")


def _check_header(name: str, value: str) -> None:
    if "\r" in value or "\n" in value:
        raise Invalid(f"{name} must not contain CR or LF characters")


def normalized_address(address: str) -> str:
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
        flush: bool = True,
    ) -> EmailQueue:
        """Validate and add one email to the outbox in `session`'s transaction.

        Raises `Invalid` (and adds nothing) for a bad address, a header with CR/LF, an empty subject or
        an oversized body. A `dedupe_key` already queued returns the existing row instead.
        `wake_worker=False` leaves the email to the queue processor (bulk loads, backfills).
        `flush=False` leaves the INSERT to the transaction's next flush, one statement for all the
        emails of a change; the row then has its id once that happens.
        """
        to_email = normalized_address(to_email)
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
            existing = _queued_with(session, dedupe_key)
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
        if flush:
            session.flush()
        if wake_worker:
            _Wakeups.for_session(session).emails.append(email)
        return email

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


def _queued_with(session: Session, dedupe_key: str) -> EmailQueue | None:
    for pending in session.new:  # queued earlier in this transaction, not flushed yet
        if isinstance(pending, EmailQueue) and pending.dedupe_key == dedupe_key:
            return pending
    with session.no_autoflush:
        return session.scalar(select(EmailQueue).where(EmailQueue.dedupe_key == dedupe_key))


class _Wakeups:
    """The `send_email_async` messages a transaction owes once it commits: one per batch of its
    emails, which the worker claims together and sends over one connection."""

    def __init__(self) -> None:
        self.emails: list[EmailQueue] = []
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

        ids = [*self.email_ids, *(email.id for email in self.emails)]  # committed, so they have ids
        if not ids or outages.broker.down:  # known down: do not wait for another refusal
            return
        try:
            for start in range(0, len(ids), settings.email_batch_size):  # one claim's worth each
                batch = ids[start : start + settings.email_batch_size]
                send_email_async.delay(batch[0], batch[1:])
        except Exception as exc:  # the broker is optional for correctness: the processor sends them
            if outages.broker.failed(exc):
                log.warning("%d email(s) not published; the queue processor will send them", len(ids))
            return
        outages.broker.ok()
