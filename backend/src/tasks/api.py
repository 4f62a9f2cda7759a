from typing import Annotated

from fastapi import APIRouter, Query, status
from fastapi.responses import Response
from sqlalchemy.orm import Session

from src.auth.deps import CurrentUser, DbSession
from src.db import outside_transaction
from src.idempotency.deps import Idempotent
from src.preferences.service import muted_among, set_muted
from src.tasks import service
from src.tasks.models import Task, TaskStatus
from src.tasks.schemas import MuteOut, TaskEventOut, TaskIn, TaskOut, TaskPage, TaskPatch
from src.validation import MAX_ID, PathId, QueryId

router = APIRouter(tags=["tasks"])


def _task_out(task: Task, watchers: list[int], muted: bool) -> TaskOut:
    return TaskOut(
        id=task.id,
        org_id=task.org_id,
        title=task.title,
        description=task.description,
        status=task.status,
        assignee_id=task.assignee_id,
        reporter_id=task.reporter_id,
        watcher_ids=watchers,
        muted=muted,
        created_at=task.created_at,
        updated_at=task.updated_at,
    )


def _own_task_out(session: Session, user_id: int, task: Task, watchers: list[int]) -> TaskOut:
    return _task_out(task, watchers, task.id in muted_among(session, user_id, [task.id]))


def _loaded_watchers(task: Task) -> list[int]:
    """The watchers of a task whose `watchers` the service just loaded or changed: no query."""
    return sorted(w.id for w in task.watchers)


@router.post("/orgs/{org_id}/tasks", status_code=status.HTTP_201_CREATED, response_model=TaskOut)
def create_task(
    org_id: PathId, body: TaskIn, user: CurrentUser, session: DbSession, idempotent: Idempotent
) -> TaskOut | Response:
    def create() -> TaskOut:
        task = service.create_task(
            session, org_id, user, body.title, body.description, body.assignee_id, body.watcher_ids
        )
        return _task_out(task, _loaded_watchers(task), muted=False)

    return idempotent.run(create)


@router.get("/orgs/{org_id}/tasks")
def list_tasks(
    org_id: PathId,
    user: CurrentUser,
    session: DbSession,
    status: TaskStatus | None = None,
    assignee_id: QueryId = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> TaskPage:
    items, total = service.list_tasks(session, org_id, user, status, assignee_id, limit, offset)
    muted = muted_among(session, user.id, (t.id for t in items))
    watchers = service.watcher_ids(session, (t.id for t in items))
    out = [_task_out(t, watchers[t.id], t.id in muted) for t in items]
    return TaskPage(items=out, total=total, limit=limit, offset=offset)


def _view_out(view: service.TaskView) -> TaskOut:
    return _task_out(view.task, view.watchers, view.muted)


@router.get("/tasks/{task_id}")
def get_task(task_id: PathId, user: CurrentUser, session: DbSession) -> TaskOut:
    # One statement needs no transaction: outside one, no BEGIN and ROLLBACK round trips.
    return _view_out(service.view_task(outside_transaction(session), task_id, user))


@router.patch("/tasks/{task_id}")
def update_task(task_id: PathId, body: TaskPatch, user: CurrentUser, session: DbSession) -> TaskOut:
    return _view_out(service.update_task(session, task_id, user, body))


@router.post("/tasks/{task_id}/watchers/{user_id}")
def add_watcher(task_id: PathId, user_id: PathId, user: CurrentUser, session: DbSession) -> TaskOut:
    task = service.set_watching(session, task_id, user, user_id, watch=True)
    return _own_task_out(session, user.id, task, _loaded_watchers(task))


@router.delete("/tasks/{task_id}/watchers/{user_id}")
def remove_watcher(task_id: PathId, user_id: PathId, user: CurrentUser, session: DbSession) -> TaskOut:
    task = service.set_watching(session, task_id, user, user_id, watch=False)
    return _own_task_out(session, user.id, task, _loaded_watchers(task))


def _mute(session: Session, task_id: int, user: CurrentUser, muted: bool) -> MuteOut:
    task = service.get_task(session, task_id, user)
    set_muted(session, task.id, user.id, muted)
    session.commit()
    return MuteOut(task_id=task.id, muted=muted)


@router.post("/tasks/{task_id}/mute", tags=["preferences"])
def mute_task(task_id: PathId, user: CurrentUser, session: DbSession) -> MuteOut:
    """Hear nothing more about this task, by email or in the app, while still watching it."""
    return _mute(session, task_id, user, True)


@router.delete("/tasks/{task_id}/mute", tags=["preferences"])
def unmute_task(task_id: PathId, user: CurrentUser, session: DbSession) -> MuteOut:
    return _mute(session, task_id, user, False)


@router.get("/tasks/{task_id}/events", response_model=list[TaskEventOut])
def list_events(task_id: PathId, user: CurrentUser, session: DbSession) -> object:
    return service.list_events(session, task_id, user)
