"""Password hashing and signed tokens."""

import functools
import hashlib
import re
from datetime import timedelta
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerifyMismatchError

from src.config import settings
from src.db import utcnow
from src.validation import MAX_ID

_hasher = PasswordHasher()
_ALGORITHM = "HS256"
_ID = re.compile(r"[1-9][0-9]{0,9}")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, InvalidHashError):
        return False


@functools.cache
def _dummy_hash() -> str:
    return _hasher.hash("no account has this password")


def spend_a_password_check(password: str) -> None:
    """What checking a password costs, for an email with no account: answering faster would tell
    an attacker which emails are registered."""
    verify_password(_dummy_hash(), password)


def password_fingerprint(password_hash: str) -> str:
    """Changes with the password: a token carrying it ends with the next password change."""
    return hashlib.sha256(password_hash.encode()).hexdigest()[:32]


def create_session_token(user_id: int, password_hash: str, purpose: str, lifetime: timedelta) -> str:
    """An access or stream token: one a thief holds stops working once the password is reset."""
    return create_token(user_id, purpose, lifetime, pwd=password_fingerprint(password_hash))


def create_token(user_id: int, purpose: str, lifetime: timedelta, **claims: Any) -> str:
    """A JWT for `user_id`; `purpose` keeps a short-lived stream token from passing as an access token.
    Extra `claims` bind a single-use token to the state it may change (see src.auth.service)."""
    now = utcnow()
    payload = {**claims, "sub": str(user_id), "typ": purpose, "iat": now, "exp": now + lifetime}
    return jwt.encode(payload, settings.secret_key, algorithm=_ALGORITHM)


def decode_claims(token: str, purpose: str) -> dict[str, Any] | None:
    """The claims of a token signed here for `purpose`, unexpired and naming a user id the database
    can hold; None for anything else, including a token without an expiry."""
    try:
        claims = jwt.decode(
            token, settings.secret_key, algorithms=[_ALGORITHM], options={"require": ["exp", "sub", "typ"]}
        )
    except jwt.PyJWTError:
        return None
    subject = claims["sub"]
    if claims["typ"] != purpose or not isinstance(subject, str) or not _ID.fullmatch(subject):
        return None
    return claims if int(subject) <= MAX_ID else None


def decode_token(token: str, purpose: str) -> int | None:
    """The user id the token was issued to, or None when it is forged, expired or for another use."""
    claims = decode_claims(token, purpose)
    return int(claims["sub"]) if claims is not None else None
