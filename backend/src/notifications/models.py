from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from src.db import Base, UTCDateTime, utcnow


class Notification(Base):
    """One in-app notification: to one user, or (recipient_id NULL) to a whole organization.

    `seq` is the live stream's event id. It is given out after commit, one publisher at a time, so
    the committed values always form a gapless sequence: a stream that has seen N has seen
    everything up to N, and `seq > N` is exactly what it missed. NULL means not published yet.
    """

    __tablename__ = "notifications"
    __table_args__ = (
        Index("ix_notifications_recipient", "recipient_id", "id"),
        Index("ix_notifications_org_broadcast", "org_id", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    recipient_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(60))
    title: Mapped[str] = mapped_column(String(300))
    body: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class NotificationRead(Base):
    """Per-user read state, so a broadcast stored once can be read by each member separately."""

    __tablename__ = "notification_reads"

    notification_id: Mapped[int] = mapped_column(
        ForeignKey("notifications.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    read_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class NotificationSequence(Base):
    """The single row whose lock serializes publishers and whose value is the last `seq` given out."""

    __tablename__ = "notification_sequence"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    # Every seq up to here may have been deleted by retention: a stream asked to resume from before
    # it cannot replay what was there, and tells its client to refetch instead.
    purged_through: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
