from datetime import datetime
from typing import Annotated

from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, ConfigDict, EmailStr, Field, field_validator

from src.validation import Line

Password = Annotated[str, Field(min_length=8, max_length=256)]


class RegisterIn(BaseModel):
    email: EmailStr
    password: Password
    name: Line = Field(min_length=1, max_length=200)

    @field_validator("email")
    @classmethod
    def _deliverable_over_plain_smtp(cls, email: str) -> str:
        """Herald's emails go out without SMTPUTF8, so a non-ASCII local part could never get one."""
        try:
            validate_email(email, check_deliverability=False, allow_smtputf8=False)
        except EmailNotValidError as exc:
            raise ValueError(f"Herald cannot send email to this address: {exc}") from None
        return email


class LoginIn(BaseModel):
    email: EmailStr
    password: str = Field(max_length=256)


class EmailIn(BaseModel):
    email: EmailStr


class TokenIn(BaseModel):
    token: str = Field(min_length=1, max_length=2000)


class PasswordResetIn(TokenIn):
    password: Password


class Accepted(BaseModel):
    """The answer of requests whose outcome must not say whether an email is registered."""

    detail: str


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    email: str
    name: str
    created_at: datetime
    email_verified_at: datetime | None
