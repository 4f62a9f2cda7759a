from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Query, Request, status
from fastapi.responses import RedirectResponse

from src.auth import service
from src.auth.deps import CurrentUser, DbSession, unauthorized
from src.auth.schemas import (
    Accepted,
    EmailIn,
    LoginIn,
    PasswordResetIn,
    RegisterIn,
    TokenIn,
    TokenOut,
    UserOut,
)
from src.auth.security import decode_token
from src.errors import Forbidden
from src.ratelimit import limit

router = APIRouter(tags=["auth"])

CHECK_INBOX = Accepted(detail="check your inbox: we sent a link to confirm the address")


@router.post("/auth/register", status_code=status.HTTP_202_ACCEPTED)
def register(body: RegisterIn, session: DbSession, request: Request) -> Accepted:
    """The same answer for a new address and a registered one (whose owner is told by email)."""
    limit(request, "register", account=service.normalize_email(body.email))
    service.register(session, body.email, body.password, body.name)
    return CHECK_INBOX


@router.post("/auth/login", response_model=TokenOut)
def login(body: LoginIn, session: DbSession, request: Request) -> TokenOut:
    limit(request, "login", account=service.normalize_email(body.email))  # before argon2's ~200 ms
    user = service.authenticate(session, body.email, body.password)
    if user is None:
        raise unauthorized("wrong email or password")
    if not service.can_log_in(user):
        raise Forbidden(
            "confirm your email address first: follow the link we emailed you, "
            "or ask for a new one with POST /api/auth/verify-email/resend"
        )
    token, expires_in = service.issue_access_token(user)
    return TokenOut(access_token=token, expires_in=expires_in)


@router.get("/auth/verify-email", status_code=status.HTTP_303_SEE_OTHER, response_class=RedirectResponse)
def verify_email_link(token: Annotated[str, Query(min_length=1, max_length=2000)]) -> RedirectResponse:
    """Where links of earlier emails lead: to the web app's page that confirms with a button. A GET
    confirms nothing, as mail scanners follow every link they see."""
    return RedirectResponse(f"/#/verify?token={quote(token, safe='')}", status.HTTP_303_SEE_OTHER)


@router.post("/auth/verify-email")
def verify_email(body: TokenIn, session: DbSession, request: Request) -> Accepted:
    return _verify(session, request, body.token)


def _verify(session: DbSession, request: Request, token: str) -> Accepted:
    limit(request, "verify", account=_token_account(token, "verify"))
    service.verify_email(session, token)
    return Accepted(detail="your address is confirmed: you can log in")


@router.post("/auth/verify-email/resend", status_code=status.HTTP_202_ACCEPTED)
def resend_verification(body: EmailIn, session: DbSession, request: Request) -> Accepted:
    limit(request, "verify", account=service.normalize_email(body.email))
    service.resend_verification(session, body.email)
    return Accepted(detail="if an unconfirmed account has this address, we emailed it a new link")


@router.post("/auth/password-reset", status_code=status.HTTP_202_ACCEPTED)
def request_password_reset(body: EmailIn, session: DbSession, request: Request) -> Accepted:
    limit(request, "reset", account=service.normalize_email(body.email))
    service.request_password_reset(session, body.email)
    return Accepted(detail="if an account has this address, we emailed it a reset code")


@router.post("/auth/password-reset/confirm")
def reset_password(body: PasswordResetIn, session: DbSession, request: Request) -> Accepted:
    limit(request, "reset", account=_token_account(body.token, "reset"))
    service.reset_password(session, body.token, body.password)
    return Accepted(detail="your password is changed: log in with the new one")


@router.get("/me", response_model=UserOut)
def me(user: CurrentUser) -> object:
    return user


def _token_account(token: str, purpose: str) -> str:
    """Whose link this is, for counting; tokens that are not ours share one count."""
    return str(decode_token(token, purpose) or "unreadable-token")
