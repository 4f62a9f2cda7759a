"""Preferences: resolved for every recipient of an event in one query, in the transaction that writes
the outbox rows, so a change applies to the next event and never to mail already queued."""

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, delete, exists, literal, null, select, union_all
from sqlalchemy.orm import Session

from src.db import insert_or_ignore
from src.preferences.catalogue import CATALOGUE, SYSTEM_DEFAULTS, Channel
from src.preferences.models import (
    DigestSchedule,
    NotificationPreference,
    OrgNotificationDefault,
    TaskMute,
)

Choices = dict[str, dict[str, str | None]]  # event type -> channel -> value (None: no choice made)


@dataclass(frozen=True)
class Choice:
    """What one recipient gets for one event."""

    email: str  # immediate | digest | off
    in_app: bool


def resolve(channel: Channel, user_value: str | None, org_value: str | None) -> tuple[str, str]:
    """(value, where it comes from): the user's own choice, else the organization's, else Herald's."""
    if user_value is not None:
        return user_value, "user"
    if org_value is not None:
        return org_value, "organization"
    return SYSTEM_DEFAULTS[channel], "default"


_RECIPIENT_IDS = bindparam("user_ids", expanding=True)
# Built once: built per call, this statement's construction cost more CPU than its execution.
_CHOICES = union_all(
    select(NotificationPreference.user_id, NotificationPreference.channel, NotificationPreference.value)
    .where(NotificationPreference.user_id.in_(_RECIPIENT_IDS))
    .where(NotificationPreference.event_type == bindparam("event_type")),
    select(null(), OrgNotificationDefault.channel, OrgNotificationDefault.value).where(
        OrgNotificationDefault.org_id == bindparam("org_id"),
        OrgNotificationDefault.event_type == bindparam("event_type"),
    ),
    # No task (None): `task_id = NULL` matches no mute.
    select(TaskMute.user_id, literal("mute"), literal("")).where(
        TaskMute.task_id == bindparam("task_id"), TaskMute.user_id.in_(_RECIPIENT_IDS)
    ),
)


def recipient_choices(
    session: Session, org_id: int, event_type: str, user_ids: Iterable[int], task_id: int | None = None
) -> dict[int, Choice]:
    """Every recipient's choice for one event, in one round trip: their own preferences, the
    organization's defaults and who muted the task."""
    ids = sorted(set(user_ids))
    if not ids:
        return {}
    parameters = {"user_ids": ids, "event_type": event_type, "org_id": org_id, "task_id": task_id}
    own: dict[tuple[int, str], str] = {}
    org: dict[str, str] = {}
    muted: set[int] = set()
    for user_id, channel, value in session.execute(_CHOICES, parameters):
        if channel == "mute":
            muted.add(user_id)
        elif user_id is None:
            org[channel] = value
        else:
            own[(user_id, channel)] = value
    choices = {}
    for uid in ids:
        email, _ = resolve(Channel.email, own.get((uid, Channel.email)), org.get(Channel.email))
        in_app, _ = resolve(Channel.in_app, own.get((uid, Channel.in_app)), org.get(Channel.in_app))
        choices[uid] = Choice(
            email="off" if uid in muted else email, in_app=in_app == "on" and uid not in muted
        )
    return choices


def _rows_by_type(rows: Iterable[Any]) -> dict[str, dict[str, str]]:
    table: dict[str, dict[str, str]] = {}
    for row in rows:
        table.setdefault(row.event_type, {})[row.channel] = row.value
    return table


def user_choices(session: Session, user_id: int) -> dict[str, dict[str, str]]:
    return _rows_by_type(
        session.scalars(select(NotificationPreference).where(NotificationPreference.user_id == user_id))
    )


def org_defaults(session: Session, org_id: int) -> dict[str, dict[str, str]]:
    return _rows_by_type(
        session.scalars(select(OrgNotificationDefault).where(OrgNotificationDefault.org_id == org_id))
    )


def effective(own: dict[str, dict[str, str]], org: dict[str, dict[str, str]]) -> dict[str, Any]:
    """Every configurable event type and channel: the value that applies and where it comes from."""
    return {
        kind.type: {
            channel.value: dict(
                zip(
                    ("value", "source"),
                    resolve(
                        channel, own.get(kind.type, {}).get(channel), org.get(kind.type, {}).get(channel)
                    ),
                    strict=True,
                )
            )
            for channel in kind.channels
        }
        for kind in CATALOGUE.values()
        if kind.channels
    }


def _store(session: Session, model: Any, owner: dict[str, int], choices: Choices) -> None:
    """Write choices (None deletes one, so the next level applies again) for `owner` (a user or an
    organization), in the caller's transaction."""
    for event_type, channels in choices.items():
        for channel, value in channels.items():
            key = {**owner, "event_type": event_type, "channel": channel}
            session.execute(delete(model).filter_by(**key))
            if value is not None:
                session.execute(insert_or_ignore(session, model).values(**key, value=value))


def set_user_choices(session: Session, user_id: int, choices: Choices) -> dict[str, dict[str, str]]:
    """Store the user's choices and return the previous ones for the types and channels touched."""
    before = user_choices(session, user_id)
    _store(session, NotificationPreference, {"user_id": user_id}, choices)
    return {et: {ch: before.get(et, {}).get(ch, "") for ch in channels} for et, channels in choices.items()}


def set_org_defaults(session: Session, org_id: int, choices: Choices) -> None:
    _store(session, OrgNotificationDefault, {"org_id": org_id}, choices)


def digest_schedule(session: Session, user_id: int) -> DigestSchedule:
    """The user's schedule, or the default (hourly) one, unsaved."""
    return session.get(DigestSchedule, user_id) or DigestSchedule(
        user_id=user_id, frequency="hourly", hour=9, timezone="UTC"
    )


def set_digest_schedule(session: Session, user_id: int, frequency: str, hour: int, timezone: str) -> None:
    schedule = session.get(DigestSchedule, user_id) or DigestSchedule(user_id=user_id)
    schedule.frequency, schedule.hour, schedule.timezone = frequency, hour, timezone
    session.add(schedule)


def set_muted(session: Session, task_id: int, user_id: int, muted: bool) -> None:
    if muted:
        session.execute(insert_or_ignore(session, TaskMute).values(task_id=task_id, user_id=user_id))
    else:
        session.execute(delete(TaskMute).where(TaskMute.task_id == task_id, TaskMute.user_id == user_id))


def muted_by(user_id: Any, task_id: Any) -> Any:
    """Whether the user muted the task, as a column of a statement that reads the task anyway."""
    return exists().where(TaskMute.user_id == user_id, TaskMute.task_id == task_id).label("muted")


_MUTED = select(TaskMute.task_id).where(
    TaskMute.user_id == bindparam("user_id"), TaskMute.task_id.in_(bindparam("task_ids", expanding=True))
)


def muted_among(session: Session, user_id: int, task_ids: Iterable[int]) -> set[int]:
    """Which of these tasks the user muted: one query, for a task or a page of them."""
    ids = sorted(set(task_ids))
    if not ids:
        return set()
    return set(session.scalars(_MUTED, {"user_id": user_id, "task_ids": ids}))
