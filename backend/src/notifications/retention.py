"""How long the inbox keeps notifications: read ones, and announcements (read or not, as each member
reads them separately), for NOTIFICATION_RETENTION_DAYS. Unread notifications to one person stay.

Deleted in batches, each in its own transaction, which also raises the sequence's `purged_through`
to the highest seq it deleted: a stream asked to resume from before that cannot replay what was
there, so it tells its client to refetch (see `live.events`).
"""

from datetime import timedelta

from sqlalchemy import ColumnElement, and_, case, delete, exists, func, or_, select, update
from sqlalchemy.orm import Session

from src.config import settings
from src.db import utcnow
from src.notifications.models import Notification, NotificationRead, NotificationSequence

BATCH = 500


def _expired() -> ColumnElement[bool]:
    read_by_recipient = exists().where(
        NotificationRead.notification_id == Notification.id,
        NotificationRead.user_id == Notification.recipient_id,
    )
    return and_(
        Notification.seq.is_not(None),  # published: an unpublished one is not old, only late
        Notification.created_at < utcnow() - timedelta(days=settings.notification_retention_days),
        or_(Notification.recipient_id.is_(None), read_by_recipient),
    )


def count_expired(session: Session) -> int:
    return session.scalar(select(func.count()).where(_expired())) or 0


def purge(session: Session, batch: int = BATCH) -> int:
    """Delete expired notifications (their read marks go with them), batch by batch; how many went."""
    deleted = 0
    while rows := session.execute(
        select(Notification.id, Notification.seq).where(_expired()).limit(batch)
    ).all():
        highest = max(seq for _id, seq in rows)
        session.execute(
            delete(NotificationRead).where(NotificationRead.notification_id.in_([i for i, _ in rows]))
        )
        deleted += session.execute(
            delete(Notification).where(Notification.id.in_([i for i, _ in rows]))
        ).rowcount
        purged = NotificationSequence.purged_through
        session.execute(
            update(NotificationSequence).values(
                purged_through=case((purged < highest, highest), else_=purged)
            )
        )
        session.commit()
    return deleted
