import enum
from datetime import datetime

from sqlalchemy import Enum, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from src.db import Base, UTCDateTime, utcnow
from src.orgs.models import Organization


class EmailStatus(enum.StrEnum):
    pending = "pending"
    sending = "sending"
    sent = "sent"
    failed = "failed"
    cancelled = "cancelled"
    suppressed = "suppressed"  # not sent: the address is suppressed (see `Suppression`); final


class EmailQueue(Base):
    """The outbox: one row per email, written in the transaction that causes it.

    Every change of `status` is a conditional UPDATE (a claim or a claim-holder's report), so two
    workers can never both own a row; `claim_token` tells a late report from a stale claim apart.
    """

    __tablename__ = "email_queue"
    __table_args__ = (Index("ix_email_queue_due", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int | None] = mapped_column(ForeignKey(Organization.id, ondelete="CASCADE"), index=True)
    to_email: Mapped[str] = mapped_column(String(320))
    to_name: Mapped[str] = mapped_column(String(200), default="")
    subject: Mapped[str] = mapped_column(String(998))
    mime: Mapped[str] = mapped_column(Text)  # the whole message, as sent: see compose_message()
    message_id: Mapped[str] = mapped_column(String(255), unique=True)
    dedupe_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    status: Mapped[EmailStatus] = mapped_column(
        Enum(EmailStatus, native_enum=False, length=20), default=EmailStatus.pending
    )
    priority: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=5)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    claim_token: Mapped[str | None] = mapped_column(String(32))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    request_id: Mapped[str | None] = mapped_column(String(64))  # the API request that queued it


class EmailAttempt(Base):
    """One row per try: what happened, the SMTP reply code, how long it took."""

    __tablename__ = "email_attempts"

    id: Mapped[int] = mapped_column(primary_key=True)
    email_id: Mapped[int] = mapped_column(ForeignKey("email_queue.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)  # restarts at 1 when an operator retries the email
    claim_token: Mapped[str | None] = mapped_column(String(32))  # the claim it was made under
    outcome: Mapped[str] = mapped_column(String(20))
    smtp_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[float] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Suppression(Base):
    """An address no email goes to: its server refused it for good, or SendGrid reported a bounce,
    a drop or a spam complaint. Mailing it again would hurt the sending domain's reputation.

    One row per address, stored lowercased; lifting a suppression deletes its row.
    """

    __tablename__ = "email_suppressions"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    reason: Mapped[str] = mapped_column(String(20))  # "rejected" (SMTP 5xx on RCPT), or SendGrid's event
    detail: Mapped[str] = mapped_column(Text, default="")  # the server's reply, or SendGrid's reason
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
