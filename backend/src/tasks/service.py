"""Tasks and their history. Every change writes its event in the same transaction as the change."""

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, String, bindparam, cast, func, insert, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from src.auth.models import User
from src.config import settings
from src.db import utcnow
from src.emails.rendering import render
from src.emails.service import EmailDraft, EmailService, normalized_address
from src.errors import Invalid, NotFound
from src.notifications.service import NotificationService
from src.orgs.models import Membership, Organization
from src.orgs.service import member_ids, require_member
from src.preferences.catalogue import EventType
from src.preferences.service import Choice, choice_columns, choice_of, muted_by
from src.preferences.unsubscribe import list_unsubscribe_headers, preferences_url, unsubscribe_url
from src.ratelimit import limit
from src.tasks import digests
from src.tasks.models import Task, TaskEvent, TaskStatus, task_watchers
from src.tasks.page import task_page_url
from src.tasks.schemas import TaskPatch
from src.text import one_line

log = logging.getLogger("herald.tasks")


def _require_members(session: Session, org_id: int, user_ids: Iterable[int], role: str) -> None:
    outsiders = sorted(set(user_ids) - member_ids(session, org_id))
    if outsiders:
        raise Invalid(f"{role} must be members of the task's organization; not members: {outsiders}")


_INSERT_EVENT = insert(TaskEvent.__table__).returning(TaskEvent.__table__.c.id)


def _record(session: Session, task_id: int, actor_id: int, kind: str, old: object, new: object) -> int:
    """A history row, written at once by a Core INSERT; its id. As an ORM object it went through the
    unit of work at the next flush, which cost a status change more CPU than the row's round trip."""
    row = {
        "task_id": task_id,
        "actor_id": actor_id,
        "kind": kind,
        "old_value": None if old is None else str(old),
        "new_value": None if new is None else str(new),
    }
    return session.connection().execute(_INSERT_EVENT, row).scalar_one()


_WATCHERS = (
    select(task_watchers.c.task_id, task_watchers.c.user_id)
    .where(task_watchers.c.task_id.in_(bindparam("task_ids", expanding=True)))
    .order_by(task_watchers.c.user_id)
)


def watcher_ids(session: Session, task_ids: Iterable[int]) -> dict[int, list[int]]:
    """Each task's watchers by id, for one task or a page of them in one query. Loading the
    `watchers` relationship instead cost a status change more CPU than any of its statements."""
    watchers: dict[int, list[int]] = {task_id: [] for task_id in task_ids}
    if watchers:
        for task_id, user_id in session.execute(_WATCHERS, {"task_ids": list(watchers)}):
            watchers[task_id].append(user_id)
    return watchers


def audience(session: Session, task: Task, actor: User, watchers: list[int]) -> list[tuple[User, Choice]]:
    """Who hears about a status change, with what each chose for it: assignee, reporter and watchers
    who are still members of the organization, never the person who made it."""
    ids = {task.reporter_id, *watchers}
    if task.assignee_id is not None:
        ids.add(task.assignee_id)
    ids.discard(actor.id)
    return _recipients(session, task, ids, EventType.task_status_changed)


def _recipients(
    session: Session, task: Task, user_ids: Iterable[int], event_type: str
) -> list[tuple[User, Choice]]:
    """Those of these users who are members of the task's organization, each with their choice for
    the event: one query."""
    parameters = {
        "user_ids": sorted(user_ids),
        "org_id": task.org_id,
        "event_type": event_type,
        "task_id": task.id,
    }
    return [(user, choice_of(*choice)) for user, *choice in session.execute(_RECIPIENTS, parameters)]


def create_task(
    session: Session,
    org_id: int,
    actor: User,
    title: str,
    description: str,
    assignee_id: int | None,
    watcher_ids: list[int],
) -> Task:
    require_member(session, org_id, actor)
    if assignee_id is not None:
        _require_members(session, org_id, [assignee_id], "assignees")
    _require_members(session, org_id, watcher_ids, "watchers")
    task = Task(
        org_id=org_id,
        title=title,
        description=description,
        assignee_id=assignee_id,
        reporter_id=actor.id,
        watchers=[session.get_one(User, uid) for uid in sorted(set(watcher_ids))],
    )
    session.add(task)
    session.flush()
    _record(session, task.id, actor.id, "created", None, task.title)
    if assignee_id is not None:
        _record(session, task.id, actor.id, "assignee_changed", None, assignee_id)
        _notify_assignee(session, task, actor)
    session.commit()
    return task


# The statements every status change runs, built once: built per call, with their cache keys, they
# cost more CPU than their execution (a change's audience and mute reads, with the task's own, took
# 11 % of an API process's CPU under status changes).
_TASK = select(Task).where(
    Task.id == bindparam("task_id"),
    Task.org_id.in_(select(Membership.org_id).where(Membership.user_id == bindparam("user_id"))),
)
_TASK_FOR_UPDATE = _TASK.with_for_update(of=Task).execution_options(populate_existing=True)
_RECIPIENTS = (
    select(User, *choice_columns(User.id))
    .where(
        User.id.in_(bindparam("user_ids", expanding=True)),
        User.id.in_(select(Membership.user_id).where(Membership.org_id == bindparam("org_id"))),
    )
    .order_by(User.id)
)
# A task as an answer shows it, in one round trip: with its watchers (as "3,7,12") and whether the
# caller muted it. Three queries before, they were most of a read's database time.
_WATCHERS_OF_TASK = (
    select(func.aggregate_strings(cast(task_watchers.c.user_id, String), ","))
    .where(task_watchers.c.task_id == Task.id)
    .scalar_subquery()
)
_TASK_VIEW = select(Task, _WATCHERS_OF_TASK, muted_by(bindparam("user_id"), Task.id)).where(_TASK.whereclause)
# What a change starts from: the task locked, the caller's mute and its organization's name for the
# emails. Not its watchers: the statement's snapshot is taken before it waits for the lock, so a
# watcher added by whoever held it would be missing. They are read by the next statement.
_TASK_TO_CHANGE = (
    select(Task, muted_by(bindparam("user_id"), Task.id), Organization.name)
    .join(Organization, Organization.id == Task.org_id)
    .where(_TASK.whereclause)
    .with_for_update(of=Task)
    .execution_options(populate_existing=True)
)
_tasks = Task.__table__
_SAVE_TASK = update(_tasks).where(_tasks.c.id == bindparam("task_id"))


def get_task(session: Session, task_id: int, user: User, for_update: bool = False) -> Task:
    """The task, if the caller belongs to its organization; otherwise it does not exist for them.

    `for_update` locks the row until commit, so two concurrent changes cannot both start from the
    same old status (and both notify about it).
    """
    query = _TASK_FOR_UPDATE if for_update else _TASK
    task = session.scalar(query, {"task_id": task_id, "user_id": user.id})
    if task is None:
        raise NotFound("task not found")
    return task


def list_tasks(
    session: Session,
    org_id: int,
    user: User,
    status: TaskStatus | None,
    assignee_id: int | None,
    limit: int,
    offset: int,
) -> tuple[list[Task], int]:
    require_member(session, org_id, user)
    query = select(Task).where(Task.org_id == org_id)
    if status is not None:
        query = query.where(Task.status == status)
    if assignee_id is not None:
        query = query.where(Task.assignee_id == assignee_id)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    items = session.scalars(query.order_by(Task.id.desc()).limit(limit).offset(offset))
    return list(items), total


@dataclass
class TaskView:
    """A task with its watchers and whether the caller muted it: what an answer shows."""

    task: Task
    watchers: list[int]
    muted: bool


def _found(row: Row[Any] | None) -> Row[Any]:
    if row is None:
        raise NotFound("task not found")
    return row


def _ids(joined: str | None) -> list[int]:
    return sorted(int(part) for part in joined.split(",")) if joined else []


def view_task(session: Session, task_id: int, user: User) -> TaskView:
    task, watchers, muted = _found(
        session.execute(_TASK_VIEW, {"task_id": task_id, "user_id": user.id}).one_or_none()
    )
    return TaskView(task, _ids(watchers), muted)


def update_task(session: Session, task_id: int, actor: User, patch: TaskPatch) -> TaskView:
    row = session.execute(_TASK_TO_CHANGE, {"task_id": task_id, "user_id": actor.id}).one_or_none()
    task, muted, org_name = _found(row)
    watchers = watcher_ids(session, [task.id])[task.id]
    sent = patch.model_fields_set
    if "status" in sent and patch.status is None:
        raise Invalid("status cannot be null")
    if "title" in sent and patch.title is None:
        raise Invalid("title cannot be null")
    if "description" in sent and patch.description is None:
        raise Invalid("description cannot be null")
    if "assignee_id" in sent and patch.assignee_id is not None:
        _require_members(session, task.org_id, [patch.assignee_id], "assignees")
    changes = {
        field: getattr(patch, field)
        for field in ("title", "description", "assignee_id", "status")
        if field in sent and getattr(patch, field) != getattr(task, field)
    }
    if "status" in changes:  # only a change sends mail
        limit(None, "status_change", account=actor.id)

    if "title" in changes:
        _record(session, task.id, actor.id, "title_changed", task.title, changes["title"])
    if "description" in changes:
        _record(session, task.id, actor.id, "description_changed", None, None)
    if "assignee_id" in changes:
        _record(session, task.id, actor.id, "assignee_changed", task.assignee_id, changes["assignee_id"])
    old_status, status_event = task.status, None
    if "status" in changes:
        status_event = _record(session, task.id, actor.id, "status_changed", old_status, changes["status"])
    _save(session, task, changes)
    if "assignee_id" in changes:
        _notify_assignee(session, task, actor)
    if status_event is not None:
        _announce_status(session, task, actor, old_status, status_event, watchers, org_name)
    session.commit()
    return TaskView(task, watchers, muted)


def _save(session: Session, task: Task, changes: dict[str, Any]) -> None:
    """The changed columns in one Core UPDATE, and the loaded task made to match without becoming
    dirty: the ORM's flush of it cost a status change more CPU than the UPDATE itself."""
    if not changes:
        return
    values = {**changes, "updated_at": utcnow()}
    session.connection().execute(_SAVE_TASK, {"task_id": task.id, **values})
    for field, value in values.items():
        set_committed_value(task, field, value)


def _announce_status(
    session: Session,
    task: Task,
    actor: User,
    old_status: TaskStatus,
    event_id: int,
    watchers: list[int],
    org_name: str,
) -> None:
    """The emails and notifications a status change causes, written in the change's transaction."""
    recipients = audience(session, task, actor, watchers)
    by_email: dict[str, list[User]] = {"immediate": [], "digest": [], "off": []}
    for user, choice in recipients:
        by_email[choice.email].append(user)
    _queue_status_emails(session, task, actor, by_email["immediate"], old_status.value, event_id, org_name)
    digest_ids = [user.id for user in by_email["digest"]]
    digests.collect(session, digest_ids, task.org_id, task.id, event_id, EventType.task_status_changed)
    NotificationService.notify(
        session,
        task.org_id,
        [user.id for user, choice in recipients if choice.in_app],
        "task.status_changed",
        f"{actor.name} moved “{task.title}” to {task.status.value}",
        data={
            "task_id": task.id,
            "old_status": old_status.value,
            "new_status": task.status.value,
            "actor_id": actor.id,
        },
    )


def _queue_status_emails(
    session: Session,
    task: Task,
    actor: User,
    recipients: list[User],
    old_status: str,
    event_id: int,
    org_name: str,
) -> None:
    """One email per recipient, in the status change's transaction; a replay queues nothing new."""
    if not recipients:
        return
    org_name = one_line(org_name)
    new_status = task.status.value
    task_url = task_page_url(settings.public_url, task.id)  # a page: the API answers a browser 401
    # Every piece of user text on one line of its own: a newline in a title would forge lines of
    # the plain-text body, and invisible bidi characters would reorder what the reader sees.
    actor_name, task_title = one_line(actor.name), one_line(task.title, 300)
    drafts = []
    for recipient in recipients:
        if recipient.email_verified_at is None and settings.verification_required:
            continue  # nobody has shown this address is theirs: Herald mails it nothing
        try:
            to_email = normalized_address(recipient.email)
        except Invalid as exc:  # one unreachable address must not block the status change
            log.warning("no status email for user %s: %s", recipient.id, exc.detail)
            continue
        recipient_name = one_line(recipient.name)
        unsubscribe = unsubscribe_url(recipient.id, [EventType.task_status_changed])
        text, html = render(
            "task_status_changed",
            recipient_name=recipient_name,
            actor_name=actor_name,
            task_title=task_title,
            old_status=old_status,
            new_status=new_status,
            task_url=task_url,
            org_name=org_name,
            unsubscribe_url=unsubscribe,
            preferences_url=preferences_url(),
        )
        drafts.append(
            EmailDraft(
                to_email=to_email,
                to_name=recipient_name,
                subject=one_line(f"[{org_name}] {task_title}: {old_status} → {new_status}", 300),
                body_text=text,
                body_html=html,
                org_id=task.org_id,
                dedupe_key=f"task-event:{event_id}:user:{recipient.id}",
                headers=list_unsubscribe_headers(unsubscribe),
            )
        )
    EmailService.queue_emails(session, drafts)


def _notify_assignee(session: Session, task: Task, actor: User) -> None:
    if task.assignee_id is None or task.assignee_id == actor.id:
        return
    # Empty if the assignee left the organization since the change checked: nothing to tell them.
    recipients = _recipients(session, task, [task.assignee_id], EventType.task_assigned)
    NotificationService.notify(
        session,
        task.org_id,
        [user.id for user, choice in recipients if choice.in_app],
        "task.assigned",
        f"{actor.name} assigned you “{task.title}”",
        data={"task_id": task.id, "actor_id": actor.id},
    )


def set_watching(session: Session, task_id: int, actor: User, user_id: int, watch: bool) -> Task:
    task = get_task(session, task_id, actor, for_update=True)
    watching = any(w.id == user_id for w in task.watchers)
    if watch and not watching:
        _require_members(session, task.org_id, [user_id], "watchers")
        task.watchers.append(session.get_one(User, user_id))
        _record(session, task.id, actor.id, "watcher_added", None, user_id)
    elif not watch and watching:
        task.watchers = [w for w in task.watchers if w.id != user_id]
        _record(session, task.id, actor.id, "watcher_removed", user_id, None)
    session.commit()
    return task


def list_events(session: Session, task_id: int, user: User) -> list[TaskEvent]:
    get_task(session, task_id, user)
    return list(session.scalars(select(TaskEvent).where(TaskEvent.task_id == task_id).order_by(TaskEvent.id)))
