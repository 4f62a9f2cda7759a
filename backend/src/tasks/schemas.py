from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from src.tasks.models import TaskStatus
from src.validation import Id, Line, Text


class TaskIn(BaseModel):
    title: Line = Field(min_length=1, max_length=300)
    description: Text = Field(default="", max_length=20_000)
    assignee_id: Id | None = None
    watcher_ids: list[Id] = Field(default_factory=list, max_length=100)


class TaskPatch(BaseModel):
    """Only the fields sent are changed; `assignee_id: null` unassigns."""

    status: TaskStatus | None = None
    assignee_id: Id | None = None
    title: Line | None = Field(default=None, min_length=1, max_length=300)
    description: Text | None = Field(default=None, max_length=20_000)


class TaskOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    org_id: int
    title: str
    description: str
    status: TaskStatus
    assignee_id: int | None
    reporter_id: int
    watcher_ids: list[int]
    muted: bool = Field(description="whether you muted it (POST/DELETE /api/tasks/{id}/mute)")
    created_at: datetime
    updated_at: datetime


class TaskPage(BaseModel):
    items: list[TaskOut]
    total: int
    limit: int
    offset: int


class TaskEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    task_id: int
    actor_id: int
    kind: str
    old_value: str | None
    new_value: str | None
    created_at: datetime


class MuteOut(BaseModel):
    task_id: int
    muted: bool
