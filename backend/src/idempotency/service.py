"""Idempotency keys: a retried create is answered with the first answer instead of being done twice.

The key's row is written in the request's own transaction, before the work, and commits (or rolls
back) with it. So the key exists exactly when what the request created exists, and a concurrent
request with the same key waits on that row (PostgreSQL) or on the write lock (SQLite) instead of
doing the work a second time.
"""

import hashlib
import json
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from src.db import insert_ignoring_duplicates, utcnow
from src.idempotency.models import IdempotencyKey

KEY_LIFETIME = timedelta(hours=24)


def fingerprint(method: str, path: str, body: bytes) -> str:
    """sha256 of the request, with the JSON body in canonical form: the same object sent with other
    spacing or key order is the same request."""
    try:
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")) if body else ""
    except (ValueError, RecursionError):  # not JSON, or nested too deep to re-encode: the bytes as
        canonical = body.hex()  # they are (the API refuses the first, and the second is rare enough)
    return hashlib.sha256(f"{method} {path}\n{canonical}".encode()).hexdigest()


def claim(session: Session, user_id: int, key: str, request_fingerprint: str) -> IdempotencyKey | None:
    """Take `key` for this request: None if it is now ours (the row is in the session's uncommitted
    transaction), else the row of the request that already has it.

    An expired row is deleted first, so an old key counts as new.
    """
    session.execute(
        delete(IdempotencyKey).where(
            IdempotencyKey.user_id == user_id,
            IdempotencyKey.key == key,
            IdempotencyKey.created_at < utcnow() - KEY_LIFETIME,
        )
    )
    row = {"user_id": user_id, "key": key, "request_fingerprint": request_fingerprint}
    if insert_ignoring_duplicates(session, IdempotencyKey.__table__, [row]):
        return None
    return session.scalars(
        select(IdempotencyKey).where(IdempotencyKey.user_id == user_id, IdempotencyKey.key == key)
    ).one()


def store_response(session: Session, user_id: int, key: str, status_code: int, body: Any) -> None:
    """Record the answer for replays; committed on its own, as the work itself already is."""
    session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.user_id == user_id, IdempotencyKey.key == key)
        .values(status_code=status_code, response_body=body)
    )
    session.commit()


def delete_expired(session: Session) -> int:
    """Delete keys older than `KEY_LIFETIME` (they count as new anyway); returns how many."""
    result = session.execute(
        delete(IdempotencyKey).where(IdempotencyKey.created_at < utcnow() - KEY_LIFETIME)
    )
    session.commit()
    return result.rowcount
