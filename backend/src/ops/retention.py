"""The daily retention job and its dry run: old emails and notifications, deleted in small batches."""

from src.celery_app import app
from src.db import SessionLocal
from src.emails import retention as email_retention
from src.notifications import retention as notification_retention


def expired_counts() -> dict[str, int]:
    """What a purge would delete now, by table."""
    with SessionLocal() as session:
        counts = email_retention.count_expired(session)
        return {**counts, "notifications": notification_retention.count_expired(session)}


def purge_expired() -> dict[str, int]:
    with SessionLocal() as session:
        deleted = email_retention.purge(session)
        return {**deleted, "notifications": notification_retention.purge(session)}


@app.task
def purge_expired_records() -> dict[str, int]:
    """Beat runs this daily (`retention` in the schedule)."""
    return purge_expired()
