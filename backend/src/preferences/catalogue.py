"""The event types people can tune, their channels and choices: one list the API, the outbox and
the unsubscribe page all read."""

import enum
from dataclasses import dataclass


class EventType(enum.StrEnum):
    task_status_changed = "task_status_changed"
    task_assigned = "task_assigned"
    announcement = "announcement"


class Channel(enum.StrEnum):
    email = "email"
    in_app = "in_app"


EMAIL_CHOICES = ("immediate", "digest", "off")
IN_APP_CHOICES = ("on", "off")
CHOICES: dict[Channel, tuple[str, ...]] = {Channel.email: EMAIL_CHOICES, Channel.in_app: IN_APP_CHOICES}
SYSTEM_DEFAULTS: dict[Channel, str] = {Channel.email: "immediate", Channel.in_app: "on"}
ACCOUNT = "account"  # verification, password reset, invitations: always sent, never digested
INVITATION_RECEIVED = "invitation.received"  # the one notification of an organization one is not in


@dataclass(frozen=True)
class EventKind:
    type: str
    label: str
    description: str
    notification_type: str  # the in-app notification's `type`
    channels: tuple[Channel, ...]  # the ones a preference can change; none for transactional mail
    transactional: bool = False


CATALOGUE: dict[str, EventKind] = {
    kind.type: kind
    for kind in (
        EventKind(
            EventType.task_status_changed,
            "Task status changes",
            "A task you report, are assigned or watch moved to another status.",
            "task.status_changed",
            (Channel.email, Channel.in_app),
        ),
        EventKind(
            EventType.task_assigned,
            "Tasks assigned to you",
            "Someone assigned a task to you (in the app only: Herald sends no email for it).",
            "task.assigned",
            (Channel.in_app,),
        ),
        EventKind(
            EventType.announcement,
            "Announcements",
            "An owner or admin broadcast to the whole organization; always in the app, stored once.",
            "announcement",
            (),
        ),
        EventKind(
            ACCOUNT,
            "Account email",
            "Address confirmation, password reset and invitations: always sent, at once.",
            INVITATION_RECEIVED,
            (),
            transactional=True,
        ),
    )
}
EVENT_TYPE_OF_NOTIFICATION = {kind.notification_type: kind.type for kind in CATALOGUE.values()}
# Every type a notification or email can have: what `GET /api/notifications?type=` accepts.
AnyEventType = enum.StrEnum("AnyEventType", {name: name for name in CATALOGUE})
