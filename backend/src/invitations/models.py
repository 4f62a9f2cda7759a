import enum
from datetime import datetime

from sqlalchemy import Enum, ForeignKey, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from src.auth.models import User
from src.db import Base, UTCDateTime, utcnow
from src.orgs.models import Organization, Role


class InvitationStatus(enum.StrEnum):
    pending = "pending"
    accepted = "accepted"
    declined = "declined"
    revoked = "revoked"
    expired = "expired"  # set when a new invitation replaces one that ran out; otherwise see expires_at


class Invitation(Base):
    """An offer of membership to an email address; nobody becomes a member until they accept it."""

    __tablename__ = "invitations"
    __table_args__ = (
        # At most one open invitation per address and organization, even when two are sent at once.
        Index(
            "uq_invitations_pending",
            "org_id",
            "email",
            unique=True,
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
        Index("ix_invitations_email_status", "email", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey(Organization.id, ondelete="CASCADE"))
    email: Mapped[str] = mapped_column(String(320))  # normalized
    role: Mapped[Role] = mapped_column(Enum(Role, native_enum=False, length=20))
    invited_by_id: Mapped[int | None] = mapped_column(ForeignKey(User.id, ondelete="SET NULL"))
    status: Mapped[InvitationStatus] = mapped_column(
        Enum(InvitationStatus, native_enum=False, length=20), default=InvitationStatus.pending
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    responded_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    org: Mapped[Organization] = relationship()
    invited_by: Mapped[User | None] = relationship()
