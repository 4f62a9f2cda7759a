from datetime import datetime

from pydantic import BaseModel, ConfigDict, EmailStr, Field

from src.auth.schemas import UserOut
from src.orgs.models import Role


class OrgIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)


class OrgOut(BaseModel):
    id: int
    name: str
    role: Role
    created_at: datetime


class MemberIn(BaseModel):
    email: EmailStr
    role: Role = Role.member


class MemberOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    user: UserOut
    role: Role
    created_at: datetime
