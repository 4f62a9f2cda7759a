"""Who wants what: users' own choices, organizations' defaults, muted tasks, digest schedules, and
the events waiting for a digest."""

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from src.db import Base, UTCDateTime, utcnow


class _Choice:
    """One value for one event type and channel (see `src.preferences.catalogue`)."""

    event_type: Mapped[str] = mapped_column(String(40), primary_key=True)
    channel: Mapped[str] = mapped_column(String(10), primary_key=True)
    value: Mapped[str] = mapped_column(String(10))


class NotificationPreference(_Choice, Base):
    """A user's own choice; overrides their organizations' defaults."""

    __tablename__ = "notification_preferences"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)


class OrgNotificationDefault(_Choice, Base):
    """What an organization's members get unless they chose."""

    __tablename__ = "org_notification_defaults"

    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True)


class TaskMute(Base):
    """One task silenced for one user, on every channel, without unwatching it."""

    __tablename__ = "task_mutes"

    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class DigestSchedule(Base):
    """When a user's digest goes out: every EMAIL_DIGEST_SECONDS (hourly, the default without a row)
    or daily at a local hour."""

    __tablename__ = "digest_schedules"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    frequency: Mapped[str] = mapped_column(String(10), default="hourly")
    hour: Mapped[int] = mapped_column(Integer, default=9)
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")


class DigestItem(Base):
    """One event owed to a user's next digest. `digest_key` is set, by one conditional UPDATE, by the
    transaction that queues the digest email: an item belongs to exactly one digest."""

    __tablename__ = "digest_items"
    __table_args__ = (
        UniqueConstraint("user_id", "event_id"),
        Index("ix_digest_items_pending", "digest_key", "user_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    event_id: Mapped[int] = mapped_column(ForeignKey("task_events.id", ondelete="CASCADE"))
    event_type: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    digest_key: Mapped[str | None] = mapped_column(String(255))
