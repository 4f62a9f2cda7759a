"""Preferences: resolved for every recipient of an event in one query, in the transaction that writes
the outbox rows, so a change applies to the next event and never to mail already queued."""

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, delete, exists, select
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


def muted_by(user_id: Any, task_id: Any) -> Any:
    """Whether the user muted the task, as a column of a statement that reads either anyway."""
    return exists().where(TaskMute.user_id == user_id, TaskMute.task_id == task_id).label("muted")


def choice_columns(user_id: Any) -> list[Any]:
    """What `choice_of()` needs, as columns of a statement that reads the recipients anyway (bound:
    `event_type`, `org_id`, `task_id`): their own email and in-app choices, the organization's, and
    whether they muted the task. A query of their own cost an event one more round trip."""

    def own(channel: Channel) -> Any:
        return (
            select(NotificationPreference.value)
            .where(
                NotificationPreference.user_id == user_id,
                NotificationPreference.event_type == bindparam("event_type"),
                NotificationPreference.channel == channel.value,
            )
            .scalar_subquery()
        )

    def organization(channel: Channel) -> Any:
        return (
            select(OrgNotificationDefault.value)
            .where(
                OrgNotificationDefault.org_id == bindparam("org_id"),
                OrgNotificationDefault.event_type == bindparam("event_type"),
                OrgNotificationDefault.channel == channel.value,
            )
            .scalar_subquery()
        )

    # No task (None): `task_id = NULL` matches no mute.
    return [
        own(Channel.email),
        organization(Channel.email),
        own(Channel.in_app),
        organization(Channel.in_app),
        muted_by(user_id, bindparam("task_id")),
    ]


def choice_of(own_email: str | None, org_email: str | None, own_in_app: str | None, org_in_app: str | None,
              muted: bool) -> Choice:  # fmt: skip
    """One recipient's choice for one event, from the values `choice_columns()` read."""
    email, _ = resolve(Channel.email, own_email, org_email)
    in_app, _ = resolve(Channel.in_app, own_in_app, org_in_app)
    return Choice(email="off" if muted else email, in_app=in_app == "on" and not muted)


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


_MUTED = select(TaskMute.task_id).where(
    TaskMute.user_id == bindparam("user_id"), TaskMute.task_id.in_(bindparam("task_ids", expanding=True))
)


def muted_among(session: Session, user_id: int, task_ids: Iterable[int]) -> set[int]:
    """Which of these tasks the user muted: one query, for a task or a page of them."""
    ids = sorted(set(task_ids))
    if not ids:
        return set()
    return set(session.scalars(_MUTED, {"user_id": user_id, "task_ids": ids}))
