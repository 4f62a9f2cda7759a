"""Every table, imported in one place so Alembic and the tests see the whole schema."""

from src.auth.models import User
from src.db import Base
from src.emails.models import EmailAttempt, EmailQueue, Suppression
from src.idempotency.models import IdempotencyKey
from src.invitations.models import Invitation
from src.notifications.models import Notification, NotificationRead, NotificationSequence
from src.orgs.models import Membership, Organization
from src.tasks.models import Task, TaskEvent, task_watchers

__all__ = [
    "Base",
    "EmailAttempt",
    "EmailQueue",
    "IdempotencyKey",
    "Invitation",
    "Membership",
    "Notification",
    "NotificationRead",
    "NotificationSequence",
    "Organization",
    "Suppression",
    "Task",
    "TaskEvent",
    "User",
    "task_watchers",
]
