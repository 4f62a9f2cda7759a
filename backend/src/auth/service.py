"""Accounts: registration, logging in, confirming an address and resetting a password.

Nothing here tells a caller whether an email is registered: registration, confirmation resends and
reset requests answer alike, and logging in costs the same password check either way. Links mailed
to an address are signed tokens bound to the state they change, which makes them single-use without
storing them: confirming sets `email_verified_at`, resetting changes the password hash.
"""

from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from src.auth.models import User
from src.auth.security import (
    create_session_token,
    create_token,
    decode_claims,
    hash_password,
    password_fingerprint,
    spend_a_password_check,
    verify_password,
)
from src.config import settings
from src.db import after_commit, utcnow
from src.emails.rendering import render
from src.emails.service import EmailService
from src.errors import Conflict, Invalid
from src.notifications.service import end_live_streams
from src.text import one_line


def normalize_email(email: str) -> str:
    return email.strip().lower()


def get_user_by_email(session: Session, email: str) -> User | None:
    return session.scalar(select(User).where(func.lower(User.email) == normalize_email(email)))


def register(session: Session, email: str, password: str, name: str) -> None:
    """Create an unconfirmed account and mail its confirmation link; for an address that already
    has an account, mail its owner that someone tried instead. The caller cannot tell which."""
    password_hash = hash_password(password)  # paid either way: the answer's timing tells nothing
    existing = get_user_by_email(session, email)
    if existing is not None:
        _mail_account_exists(session, existing)
        session.commit()
        return
    user = User(email=normalize_email(email), name=name.strip(), password_hash=password_hash)
    session.add(user)
    try:
        session.flush()
    except IntegrityError:  # the same address registered at the same instant: that one stands
        session.rollback()
        return
    _mail_verification(session, user)
    session.commit()


def authenticate(session: Session, email: str, password: str) -> User | None:
    user = get_user_by_email(session, email)
    if user is None:
        spend_a_password_check(password)
        return None
    return user if verify_password(user.password_hash, password) else None


def can_log_in(user: User) -> bool:
    return user.email_verified_at is not None or not settings.verification_required


def issue_access_token(user: User) -> tuple[str, int]:
    lifetime = timedelta(minutes=settings.access_token_expire_minutes)
    token = create_session_token(user.id, user.password_hash, "access", lifetime)
    return token, int(lifetime.total_seconds())


def resend_verification(session: Session, email: str) -> None:
    user = get_user_by_email(session, email)
    if user is not None and user.email_verified_at is None:
        _mail_verification(session, user)
        session.commit()


def verify_email(session: Session, token: str) -> User:
    """Confirm the address a verification link was mailed to; the link works once."""
    claims = decode_claims(token, "verify")
    user = session.get(User, int(claims["sub"])) if claims else None
    if user is None or claims is None or claims.get("email") != user.email:
        raise Invalid("this confirmation link is invalid or has expired; ask for a new one")
    if user.email_verified_at is not None:
        raise Conflict("this confirmation link was already used: the address is confirmed")
    user.email_verified_at = utcnow()
    session.commit()
    return user


def request_password_reset(session: Session, email: str) -> None:
    user = get_user_by_email(session, email)
    if user is not None:
        minutes = settings.password_reset_token_minutes
        token = create_token(
            user.id, "reset", timedelta(minutes=minutes), pwd=password_fingerprint(user.password_hash)
        )
        confirm_url = f"{settings.public_url}/api/auth/password-reset/confirm"
        _mail(session, user, "password_reset", "Reset your Herald password",
              token=token, minutes=minutes, confirm_url=confirm_url)  # fmt: skip
        session.commit()


def reset_password(session: Session, token: str, new_password: str) -> None:
    """Set a new password with a mailed reset token, which then no longer matches the account and
    so cannot be used again. Following it also proves the address is the caller's."""
    claims = decode_claims(token, "reset")
    user = session.get(User, int(claims["sub"])) if claims else None
    if user is None or claims is None or claims.get("pwd") != password_fingerprint(user.password_hash):
        raise Invalid("this reset code is invalid, used or expired; ask for a new one")
    user.password_hash = hash_password(new_password)  # which ends its access and stream tokens
    user.email_verified_at = user.email_verified_at or utcnow()
    after_commit(session, lambda: end_live_streams(user.id))  # and the streams they opened
    session.commit()


def _mail_verification(session: Session, user: User) -> None:
    hours = settings.verification_token_hours
    token = create_token(user.id, "verify", timedelta(hours=hours), email=user.email)
    # The web app's page, where the owner confirms with a button: following a link changes nothing,
    # as mail scanners follow every link (and would confirm an address someone else registered).
    link = f"{settings.public_url}/#/verify?token={token}"
    _mail(session, user, "verify_email", "Confirm your address for Herald", link=link, hours=hours)


def _mail_account_exists(session: Session, user: User) -> None:
    reset_hint = f"POST {settings.public_url}/api/auth/password-reset with your address"
    _mail(
        session, user, "account_exists", "Someone tried to sign up with your address", reset_hint=reset_hint
    )


def _mail(session: Session, user: User, template: str, subject: str, **context: object) -> None:
    """An account email to `user`, ahead of task mail in the queue: someone is waiting for it."""
    name = one_line(user.name)
    text, html = render(template, recipient_name=name, **context)
    EmailService.queue_email(
        session,
        to_email=user.email,
        to_name=name,
        subject=subject,
        body_text=text,
        body_html=html,
        priority=10,
    )
