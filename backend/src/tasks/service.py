"""Tasks and their history. Every change writes its event in the same transaction as the change."""

import logging
from collections.abc import Iterable

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from src.auth.models import User
from src.config import settings
from src.emails.rendering import render
from src.emails.service import EmailDraft, EmailService, normalized_address
from src.errors import Invalid, NotFound
from src.notifications.service import NotificationService
from src.orgs.models import Membership, Organization
from src.orgs.service import member_ids, require_member
from src.preferences.catalogue import EventType
from src.preferences.service import recipient_choices
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


def _record(session: Session, task: Task, actor: User, kind: str, old: object, new: object) -> TaskEvent:
    event = TaskEvent(
        task_id=task.id,
        actor_id=actor.id,
        kind=kind,
        old_value=None if old is None else str(old),
        new_value=None if new is None else str(new),
    )
    session.add(event)
    return event


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


def audience(session: Session, task: Task, actor: User, watchers: list[int]) -> list[User]:
    """Who hears about a change: assignee, reporter and watchers who are still members of the
    organization, never the person who made it."""
    ids = {task.reporter_id, *watchers}
    if task.assignee_id is not None:
        ids.add(task.assignee_id)
    ids.discard(actor.id)
    return list(session.scalars(_AUDIENCE, {"user_ids": sorted(ids), "org_id": task.org_id}))


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
    _record(session, task, actor, "created", None, task.title)
    if assignee_id is not None:
        _record(session, task, actor, "assignee_changed", None, assignee_id)
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
_AUDIENCE = (
    select(User)
    .where(
        User.id.in_(bindparam("user_ids", expanding=True)),
        User.id.in_(select(Membership.user_id).where(Membership.org_id == bindparam("org_id"))),
    )
    .order_by(User.id)
)
_ORG_NAME = select(Organization.name).where(Organization.id == bindparam("org_id"))


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


def update_task(session: Session, task_id: int, actor: User, patch: TaskPatch) -> tuple[Task, list[int]]:
    """The task as changed, and its watchers."""
    task = get_task(session, task_id, actor, for_update=True)
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
    if "status" in sent and patch.status != task.status:  # only a change sends mail
        limit(None, "status_change", account=actor.id)

    if "title" in sent and patch.title != task.title:
        _record(session, task, actor, "title_changed", task.title, patch.title)
        task.title = patch.title
    if "description" in sent and patch.description != task.description:
        _record(session, task, actor, "description_changed", None, None)
        task.description = patch.description
    if "assignee_id" in sent and patch.assignee_id != task.assignee_id:
        _record(session, task, actor, "assignee_changed", task.assignee_id, patch.assignee_id)
        task.assignee_id = patch.assignee_id
        _notify_assignee(session, task, actor)
    if "status" in sent and patch.status != task.status:
        change_status(session, task, actor, patch.status, watchers)
    session.commit()
    return task, watchers


def change_status(
    session: Session, task: Task, actor: User, new_status: TaskStatus, watchers: list[int]
) -> None:
    """The event emails and notifications hang on: all written in the caller's transaction."""
    old_status = task.status
    event = _record(session, task, actor, "status_changed", old_status.value, new_status.value)
    task.status = new_status
    session.flush()
    recipients = audience(session, task, actor, watchers)
    event_type = EventType.task_status_changed
    choices = recipient_choices(session, task.org_id, event_type, [user.id for user in recipients], task.id)
    by_email = {"immediate": [], "digest": [], "off": []}
    for user in recipients:
        by_email[choices[user.id].email].append(user)
    _queue_status_emails(
        session, task, actor, by_email["immediate"], old_status.value, new_status.value, event.id
    )
    digest_ids = [user.id for user in by_email["digest"]]
    digests.collect(session, digest_ids, task.org_id, task.id, event.id, event_type)
    NotificationService.notify(
        session,
        task.org_id,
        [user.id for user in recipients if choices[user.id].in_app],
        "task.status_changed",
        f"{actor.name} moved “{task.title}” to {new_status.value}",
        data={
            "task_id": task.id,
            "old_status": old_status.value,
            "new_status": new_status.value,
            "actor_id": actor.id,
        },
    )


def _queue_status_emails(
    session: Session,
    task: Task,
    actor: User,
    recipients: list[User],
    old_status: str,
    new_status: str,
    event_id: int,
) -> None:
    """One email per recipient, in the status change's transaction; a replay queues nothing new."""
    if not recipients:
        return
    org_name = one_line(session.execute(_ORG_NAME, {"org_id": task.org_id}).scalar_one())
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
    choices = recipient_choices(session, task.org_id, EventType.task_assigned, [task.assignee_id], task.id)
    if choices[task.assignee_id].in_app:
        NotificationService.notify(
            session,
            task.org_id,
            [task.assignee_id],
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
        _record(session, task, actor, "watcher_added", None, user_id)
    elif not watch and watching:
        task.watchers = [w for w in task.watchers if w.id != user_id]
        _record(session, task, actor, "watcher_removed", user_id, None)
    session.commit()
    return task


def list_events(session: Session, task_id: int, user: User) -> list[TaskEvent]:
    get_task(session, task_id, user)
    return list(session.scalars(select(TaskEvent).where(TaskEvent.task_id == task_id).order_by(TaskEvent.id)))
