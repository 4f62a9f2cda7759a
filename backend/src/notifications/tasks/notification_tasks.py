"""Celery tasks for notifications (queue `notifications`). Thin: the work is in the service.

`send_notification` and `broadcast_notification` are for callers outside a database transaction;
code inside one calls `NotificationService.notify()` / `.broadcast()` so the notification commits
with its cause. `publish_notifications` is the beat job that publishes whatever was not.
"""

from typing import Any

from src.celery_app import app
from src.db import SessionLocal
from src.notifications.service import NotificationService, publish_pending, publish_tick
from src.orgs.service import member_org_ids


def _content(payload: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    return str(payload.get("title", "")), str(payload.get("body", "")), dict(payload.get("data", {}))


@app.task
def send_notification(user_id: int, type: str, payload: dict[str, Any]) -> int:
    """Store a notification for one user (in `payload["org_id"]`, or their first organization)."""
    title, body, data = _content(payload)
    with SessionLocal() as session:
        org_ids = member_org_ids(session, user_id)
        org_id = payload.get("org_id") or min(org_ids, default=None)
        if org_id not in org_ids:
            raise ValueError(f"user {user_id} is not a member of organization {org_id}")
        [notification_id] = NotificationService.notify(session, org_id, [user_id], type, title, body, data)
        session.commit()
        return notification_id


@app.task
def broadcast_notification(org_id: int, type: str, payload: dict[str, Any]) -> int:
    """Store one notification for every member of the organization and publish it."""
    title, body, data = _content(payload)
    with SessionLocal() as session:
        notification = NotificationService.broadcast(session, org_id, type, title, body, data)
        session.commit()
        return notification.id


@app.task
def publish_notifications() -> int:
    """Publish what no after-commit hook could, and tell streams the latest seq so gaps get filled."""
    published = publish_pending()
    publish_tick()
    return published
