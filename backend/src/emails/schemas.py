from datetime import datetime

from pydantic import BaseModel, ConfigDict

from src.emails.models import EmailStatus


class EmailOut(BaseModel):
    """An outbox row as an organization's admins see it (without the message body)."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    to_email: str
    to_name: str
    subject: str
    message_id: str
    status: EmailStatus
    attempts: int
    max_attempts: int
    next_attempt_at: datetime
    last_error: str | None
    created_at: datetime
    sent_at: datetime | None


class EmailPage(BaseModel):
    items: list[EmailOut]
    counts: dict[str, int]


class SuppressionOut(BaseModel):
    """An address no email goes to, and why: `rejected` (its server refused it for good), or the
    SendGrid event that reported it (`bounce`, `dropped`, `spamreport`)."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    email: str
    reason: str
    detail: str
    created_at: datetime


class SuppressionPage(BaseModel):
    items: list[SuppressionOut]


class SendGridReceipt(BaseModel):
    """What a batch of SendGrid events did: how many it held, how many addresses it newly suppressed."""

    events: int
    suppressed: int
