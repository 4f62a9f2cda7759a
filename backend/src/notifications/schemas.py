from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from src.validation import Line, Text


class NotificationOut(BaseModel):
    id: int
    seq: int | None
    org_id: int
    type: str
    event_type: str = Field(description="its type in the preferences' catalogue, for `?type=`")
    title: str
    body: str
    data: dict[str, Any]
    broadcast: bool
    created_at: datetime
    read_at: datetime | None


class NotificationPage(BaseModel):
    items: list[NotificationOut]
    next_before: int | None = Field(description="pass as `before` for the next (older) page")


class UnreadCount(BaseModel):
    count: int


class StreamToken(BaseModel):
    token: str
    expires_in: int


class AnnouncementIn(BaseModel):
    title: Line = Field(min_length=1, max_length=300)
    body: Text = Field(default="", max_length=10_000)
