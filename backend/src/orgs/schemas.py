from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from src.auth.schemas import UserOut
from src.orgs.models import Role
from src.validation import Line


class OrgIn(BaseModel):
    name: Line = Field(min_length=1, max_length=200)


class OrgOut(BaseModel):
    id: int
    name: str
    role: Role
    created_at: datetime


class MemberOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    user: UserOut
    role: Role
    created_at: datetime
