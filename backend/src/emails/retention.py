"""How long the outbox keeps what is finished: sent emails, with their attempts, for
EMAIL_RETENTION_DAYS; failed, cancelled and suppressed ones for EMAIL_FAILED_RETENTION_DAYS (an
operator may still want to retry those). Pending and sending rows are never touched.

Deleted in batches of BATCH rows, each in its own short transaction, so a purge of millions of rows
never holds the outbox's locks for long or grows one huge transaction.
"""

from datetime import timedelta

from sqlalchemy import ColumnElement, and_, delete, func, or_, select
from sqlalchemy.orm import Session

from src.config import settings
from src.db import utcnow
from src.emails.models import EmailAttempt, EmailQueue, EmailStatus

BATCH = 500


def _expired() -> ColumnElement[bool]:
    now = utcnow()
    sent_before = now - timedelta(days=settings.email_retention_days)
    failed_before = now - timedelta(days=settings.email_failed_retention_days)
    return or_(
        and_(EmailQueue.status == EmailStatus.sent, EmailQueue.updated_at < sent_before),
        and_(
            EmailQueue.status.in_([EmailStatus.failed, EmailStatus.cancelled, EmailStatus.suppressed]),
            EmailQueue.updated_at < failed_before,
        ),
    )


def count_expired(session: Session) -> dict[str, int]:
    """What `purge` would delete now: {"emails": n, "email_attempts": m}."""
    ids = select(EmailQueue.id).where(_expired())
    emails = session.scalar(select(func.count()).select_from(ids.subquery())) or 0
    attempts = session.scalar(select(func.count()).where(EmailAttempt.email_id.in_(ids))) or 0
    return {"emails": emails, "email_attempts": attempts}


def purge(session: Session, batch: int = BATCH) -> dict[str, int]:
    """Delete expired emails and their attempts, batch by batch; how many of each went."""
    deleted = {"emails": 0, "email_attempts": 0}
    # Locked as they are picked, skipping any row being changed: an email an operator retries at
    # this moment is pending once that commits, and must not be deleted by the ids read before.
    expired = select(EmailQueue.id).where(_expired()).limit(batch).with_for_update(skip_locked=True)
    while ids := list(session.scalars(expired)):
        deleted["email_attempts"] += session.execute(
            delete(EmailAttempt).where(EmailAttempt.email_id.in_(ids))
        ).rowcount
        deleted["emails"] += session.execute(delete(EmailQueue).where(EmailQueue.id.in_(ids))).rowcount
        session.commit()
    return deleted
