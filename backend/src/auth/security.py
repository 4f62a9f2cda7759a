"""Password hashing and signed tokens."""

from datetime import timedelta

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerifyMismatchError

from src.config import settings
from src.db import utcnow

_hasher = PasswordHasher()
_ALGORITHM = "HS256"


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, InvalidHashError):
        return False


def create_token(user_id: int, purpose: str, lifetime: timedelta) -> str:
    """A JWT for `user_id`; `purpose` keeps a short-lived stream token from passing as an access token."""
    now = utcnow()
    claims = {"sub": str(user_id), "typ": purpose, "iat": now, "exp": now + lifetime}
    return jwt.encode(claims, settings.secret_key, algorithm=_ALGORITHM)


def decode_token(token: str, purpose: str) -> int | None:
    """The user id the token was issued to, or None when it is forged, expired or for another use."""
    try:
        claims = jwt.decode(token, settings.secret_key, algorithms=[_ALGORITHM])
    except jwt.PyJWTError:
        return None
    if claims.get("typ") != purpose:
        return None
    try:
        return int(claims["sub"])
    except (KeyError, ValueError):
        return None
