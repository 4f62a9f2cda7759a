from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from src.auth.models import User
from src.auth.security import create_token, hash_password, verify_password
from src.config import settings
from src.errors import Conflict


def normalize_email(email: str) -> str:
    return email.strip().lower()


def get_user_by_email(session: Session, email: str) -> User | None:
    return session.scalar(select(User).where(func.lower(User.email) == normalize_email(email)))


def register(session: Session, email: str, password: str, name: str) -> User:
    if get_user_by_email(session, email) is not None:
        raise Conflict("a user with this email already exists")
    user = User(email=normalize_email(email), name=name.strip(), password_hash=hash_password(password))
    session.add(user)
    try:
        session.commit()
    except IntegrityError:  # the same email registered at the same instant
        session.rollback()
        raise Conflict("a user with this email already exists") from None
    return user


def authenticate(session: Session, email: str, password: str) -> User | None:
    user = get_user_by_email(session, email)
    if user is None or not verify_password(user.password_hash, password):
        return None
    return user


def issue_access_token(user: User) -> tuple[str, int]:
    lifetime = timedelta(minutes=settings.access_token_expire_minutes)
    return create_token(user.id, "access", lifetime), int(lifetime.total_seconds())
