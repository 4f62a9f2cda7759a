from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from src.db import Base, UTCDateTime, utcnow


class IdempotencyKey(Base):
    """A client's `Idempotency-Key` and the answer it got, so a retry is answered instead of redone.

    The row is inserted in the transaction of the request it guards and commits with what that request
    creates; `status_code`/`response_body` are filled in just after. NULL there means: in progress, or
    the request died between its commit and storing the answer.
    """

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("user_id", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    request_fingerprint: Mapped[str] = mapped_column(String(64))  # sha256 hex
    status_code: Mapped[int | None]
    response_body: Mapped[Any] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
