"""Digests: a user's events of one window in one email, each task collapsed into its latest state
with its history underneath.

Exactly once, whatever runs it: the transaction that queues a digest first takes its events with one
conditional UPDATE (`digest_key` NULL -> this window's key), so a second builder, on another beat or
worker, finds them taken; a builder killed before its commit takes nothing, and the next run builds
the digest. The email goes through the outbox with the same key as its dedupe key.
"""

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from src.auth.models import User
from src.config import settings
from src.db import SessionLocal, insert_or_ignore, utcnow
from src.emails.models import EmailQueue
from src.emails.rendering import render
from src.emails.service import EmailDraft, EmailService, normalized_address
from src.errors import Invalid
from src.orgs.models import Organization
from src.preferences.models import DigestItem, DigestSchedule
from src.preferences.unsubscribe import list_unsubscribe_headers, preferences_url, unsubscribe_url
from src.tasks.models import Task, TaskEvent
from src.tasks.page import task_page_url
from src.text import one_line

log = logging.getLogger("herald.digests")

# What one digest shows, so that no burst of changes makes it too large to send (EMAIL_MAX_BODY_BYTES):
# each task's latest changes, and the tasks changed first; the rest are counted.
HISTORY_SHOWN = 10
TASKS_SHOWN = 50


def collect(
    session: Session, user_ids: list[int], org_id: int, task_id: int, event_id: int, event_type: str
) -> None:
    """Owe these users this event in their next digest, in the caller's transaction."""
    if user_ids:
        rows = [
            {
                "user_id": uid,
                "org_id": org_id,
                "task_id": task_id,
                "event_id": event_id,
                "event_type": event_type,
            }
            for uid in user_ids
        ]
        session.execute(insert_or_ignore(session, DigestItem), rows)


def window_start(frequency: str, hour: int, timezone: str, now: datetime) -> datetime:
    """When the user's current window began: events before it are due in a digest now."""
    if frequency == "daily":
        local = now.astimezone(ZoneInfo(timezone))
        start = local.replace(hour=hour, minute=0, second=0, microsecond=0)
        if start > local:
            start -= timedelta(days=1)
        return start.astimezone(UTC)
    seconds = settings.email_digest_seconds
    return datetime.fromtimestamp(now.timestamp() // seconds * seconds, UTC)


def digest_key(user_id: int, window_end: datetime) -> str:
    return f"digest:user:{user_id}:until:{window_end.astimezone(UTC):%Y%m%dT%H%M%SZ}"


def build_due(now: datetime | None = None) -> int:
    """Queue every digest whose window has closed; returns how many were queued."""
    now = now or utcnow()
    with SessionLocal() as session:
        pending = session.execute(
            select(
                DigestItem.user_id,
                func.min(DigestItem.created_at),
                DigestSchedule.frequency,
                DigestSchedule.hour,
                DigestSchedule.timezone,
            )
            .outerjoin(DigestSchedule, DigestSchedule.user_id == DigestItem.user_id)
            .where(DigestItem.digest_key.is_(None))
            .group_by(
                DigestItem.user_id, DigestSchedule.frequency, DigestSchedule.hour, DigestSchedule.timezone
            )
        ).all()
        session.commit()
    built = 0
    for user_id, oldest, frequency, hour, timezone in pending:
        closed = window_start(frequency or "hourly", hour or 0, timezone or "UTC", now)
        try:
            if oldest < closed and build(user_id, closed):
                built += 1
        except Invalid as exc:  # one user's digest must not hold back everyone's after it
            log.error("digest of user %s not queued: %s", user_id, exc.detail)
    return built


def build(user_id: int, window_end: datetime) -> bool:
    """Queue the user's digest of the events before `window_end` not yet in one; False if there is
    none to send (nothing owed, another builder took them, or the address cannot be mailed)."""
    key = digest_key(user_id, window_end)
    with SessionLocal() as session:
        taken = session.scalars(
            update(DigestItem)
            .where(
                DigestItem.user_id == user_id,
                DigestItem.digest_key.is_(None),
                DigestItem.created_at < window_end,
            )
            .values(digest_key=key)
            .returning(DigestItem.id)
            .execution_options(synchronize_session=False)
        ).all()
        draft = _draft(session, user_id, list(taken), key) if taken else None
        if draft is not None:
            EmailService.queue_emails(session, [draft])
        session.commit()
    return draft is not None


@dataclass
class _TaskChanges:
    title: str
    url: str
    org_name: str
    statuses: list[str] = field(default_factory=list)
    actor_names: list[str] = field(default_factory=list)
    history: list[dict[str, str]] = field(default_factory=list)

    @property
    def actors(self) -> str:
        names = self.actor_names
        return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"

    @property
    def path(self) -> str:
        """The statuses it went through, the first and the latest ones when there were many."""
        statuses = self.statuses
        if len(statuses) > HISTORY_SHOWN + 1:
            statuses = [statuses[0], "…", *statuses[-HISTORY_SHOWN:]]
        return " → ".join(statuses)

    @property
    def latest(self) -> list[dict[str, str]]:
        return self.history[-HISTORY_SHOWN:]

    @property
    def earlier(self) -> int:
        return len(self.history) - len(self.latest)


def _draft(session: Session, user_id: int, item_ids: list[int], key: str) -> EmailDraft | None:
    user = session.get_one(User, user_id)
    if user.email_verified_at is None and settings.verification_required:
        return None  # as for immediate mail: nobody has shown this address is theirs
    try:
        to_email = normalized_address(user.email)
    except Invalid as exc:
        log.warning("no digest for user %s: %s", user_id, exc.detail)
        return None
    if session.scalar(select(EmailQueue.id).where(EmailQueue.dedupe_key == key)) is not None:
        key = f"{key}:late:{min(item_ids)}"  # events committed after their window's digest went out
    schedule = session.get(DigestSchedule, user_id)
    zone = ZoneInfo(schedule.timezone if schedule else "UTC")
    rows = session.execute(
        select(
            DigestItem.event_type,
            TaskEvent,
            Task.id,
            Task.title,
            Organization.id,
            Organization.name,
            User.name,
        )
        .join(TaskEvent, TaskEvent.id == DigestItem.event_id)
        .join(Task, Task.id == DigestItem.task_id)
        .join(Organization, Organization.id == DigestItem.org_id)
        .join(User, User.id == TaskEvent.actor_id)
        .where(DigestItem.id.in_(item_ids))
        .order_by(TaskEvent.id)
    ).all()
    tasks: dict[int, _TaskChanges] = {}
    org_names = {one_line(org_name) for *_, org_name, _ in rows}
    org_ids = {org_id for *_, org_id, _, _ in rows}
    for _event_type, event, task_id, title, _org_id, org_name, actor_name in rows:
        changes = tasks.get(task_id)
        if changes is None:
            changes = tasks[task_id] = _TaskChanges(
                one_line(title, 300),
                task_page_url(settings.public_url, task_id),
                one_line(org_name) if len(org_names) > 1 else "",
                [event.old_value or ""],
            )
        actor = one_line(actor_name)
        changes.statuses.append(event.new_value or "")
        if actor not in changes.actor_names:
            changes.actor_names.append(actor)
        at = event.created_at.astimezone(zone).strftime("%Y-%m-%d %H:%M")
        changes.history.append({"at": at, "actor": actor, "old": event.old_value, "new": event.new_value})
    count, task_count = len(rows), len(tasks)
    summary = f"{count} change{'s' * (count != 1)} on {task_count} task{'s' * (task_count != 1)}"
    unsubscribe = unsubscribe_url(user_id, sorted({event_type for event_type, *_ in rows}))
    recipient_name = one_line(user.name)
    text, html = render(
        "digest",
        recipient_name=recipient_name,
        summary=summary,
        tasks=list(tasks.values())[:TASKS_SHOWN],
        more_tasks=max(0, task_count - TASKS_SHOWN),
        app_url=settings.public_url,
        unsubscribe_url=unsubscribe,
        preferences_url=preferences_url(),
    )
    [org_name] = org_names if len(org_names) == 1 else ["Herald"]
    return EmailDraft(
        to_email=to_email,
        to_name=recipient_name,
        subject=one_line(f"[{org_name}] {summary}", 300),
        body_text=text,
        body_html=html,
        org_id=next(iter(org_ids)) if len(org_ids) == 1 else None,
        dedupe_key=key,
        headers=list_unsubscribe_headers(unsubscribe),
    )
