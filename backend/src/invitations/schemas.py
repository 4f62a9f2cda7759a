from datetime import datetime

from pydantic import BaseModel, EmailStr

from src.invitations.models import InvitationStatus
from src.orgs.models import Role


class InvitationIn(BaseModel):
    email: EmailStr
    role: Role = Role.member


class InvitationOut(BaseModel):
    """What the organization sees: the same whether or not the address has an account."""

    id: int
    org_id: int
    email: str
    role: Role
    status: InvitationStatus
    created_at: datetime
    expires_at: datetime


class ReceivedInvitationOut(BaseModel):
    """What the invitee sees in their list."""

    id: int
    org_id: int
    org_name: str
    invited_by: str | None
    role: Role
    created_at: datetime
    expires_at: datetime
