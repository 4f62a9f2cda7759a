"""Claiming emails: whoever wins the conditional UPDATE that moves a row to `sending` owns it until
its lease expires; a crashed worker's claim simply expires and the email is due again."""

import random
import time
import uuid
from dataclasses import dataclass, fields
from datetime import timedelta
from functools import cache
from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, or_, select, update
from sqlalchemy.orm import Session

from src.config import settings
from src.db import UTCDateTime, utcnow
from src.emails.models import EmailQueue, EmailStatus

_queue = EmailQueue.__table__


def _due(now: object) -> ColumnElement[bool]:
    return or_(
        and_(_queue.c.status == EmailStatus.pending, _queue.c.next_attempt_at <= now),
        and_(_queue.c.status == EmailStatus.sending, _queue.c.lease_expires_at < now),
    )


@dataclass(frozen=True, slots=True)
class ClaimedEmail:
    """What sending a claimed email reads of its row."""

    id: int
    to_email: str
    mime: str
    priority: int
    attempts: int  # this attempt's number: the claim counted it
    max_attempts: int
    request_id: str | None


_CLAIMED_COLUMNS = [_queue.c[field.name] for field in fields(ClaimedEmail)]  # in the fields' order


@cache
def _claim_statement(only: bool, first: bool) -> Any:
    """The claiming UPDATE, built once per shape, in Core: built per call, or run through the ORM
    (which loaded each row as an `EmailQueue`), it cost a worker more CPU than the claim's round
    trip; a wake-up claims a handful of rows.

    A materialized CTE runs the locking SELECT exactly once. As `id IN (subquery)` PostgreSQL may
    re-run it per outer row, and with SKIP LOCKED every run picks new rows: one claim takes all.
    """
    now = bindparam("now", type_=UTCDateTime())
    candidates = select(_queue.c.id).where(_due(now), _queue.c.attempts < _queue.c.max_attempts)
    if only:
        candidates = candidates.where(_queue.c.id.in_(bindparam("only", expanding=True)))
    order = [_queue.c.priority.desc(), _queue.c.next_attempt_at, _queue.c.id]
    if first:
        order.insert(0, _queue.c.id.in_(bindparam("first", expanding=True)).desc())
    picked = (
        candidates.order_by(*order)
        .limit(bindparam("limit"))
        .with_for_update(skip_locked=True)
        .cte("picked")
        .prefix_with("MATERIALIZED", dialect="postgresql")
    )
    return (
        _queue.update()
        .where(_queue.c.id == picked.c.id)
        .values(
            status=EmailStatus.sending,
            claim_token=bindparam("token"),
            lease_expires_at=bindparam("lease_expires_at", type_=UTCDateTime()),
            attempts=_queue.c.attempts + 1,
            updated_at=now,
        )
        .returning(*_CLAIMED_COLUMNS)
    )


@dataclass
class Claim:
    token: str
    emails: list[ClaimedEmail]
    leased_at: float  # time.monotonic() when the lease was last taken or renewed, from before the write

    @property
    def lease_ends(self) -> float:
        return self.leased_at + settings.email_lease_seconds

    @property
    def renewal_due(self) -> bool:
        """Past half the lease, the emails not yet sent get a fresh lease."""
        return time.monotonic() > self.leased_at + settings.email_lease_seconds / 2


def claim(
    session: Session, limit: int, only: list[int] | None = None, first: list[int] | None = None
) -> Claim:
    """Atomically take up to `limit` due emails for this worker: only those in `only` when given,
    and those in `first` ahead of the rest.

    One statement picks and updates the rows. On PostgreSQL the picking SELECT locks them with SKIP
    LOCKED, and re-checks a row changed under it before locking it; SQLite runs one writer at a time.
    Either way a row is never owned by two claims.
    """
    leased_at = time.monotonic()  # from before the statement, which may wait for a lock
    now = utcnow()
    token = uuid.uuid4().hex
    params: dict[str, Any] = {
        "now": now,
        "token": token,
        "lease_expires_at": now + timedelta(seconds=settings.email_lease_seconds),
        "limit": limit,
    }
    if only is not None:
        params["only"] = only
    if first:
        params["first"] = first
    rows = session.execute(_claim_statement(only is not None, bool(first)), params)
    claimed = [ClaimedEmail(*row) for row in rows]
    session.commit()
    return Claim(token, sorted(claimed, key=lambda e: (-e.priority, e.id)), leased_at)


def backoff_seconds(attempts: int) -> float:
    """Exponential backoff with jitter, so a recovering SMTP server is not hit by a thundering herd."""
    ceiling = min(
        settings.email_backoff_max_seconds, settings.email_backoff_base_seconds * 2 ** (attempts - 1)
    )
    return random.uniform(ceiling / 2, ceiling)


def release(session: Session, emails: list[ClaimedEmail], token: str) -> None:
    """Hand back claimed emails that were not tried, without counting an attempt."""
    if not emails:
        return
    session.execute(
        update(EmailQueue)
        .where(EmailQueue.id.in_([e.id for e in emails]), EmailQueue.claim_token == token)
        .values(
            status=EmailStatus.pending,
            attempts=EmailQueue.attempts - 1,
            claim_token=None,
            lease_expires_at=None,
            updated_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )
    session.commit()


def renew(session: Session, claim: Claim, emails: list[ClaimedEmail]) -> bool:
    """A fresh lease for the claim's emails still to be sent, so a long batch never outlives its
    claim; False if any of them is no longer ours."""
    leased_at = time.monotonic()
    now = utcnow()
    result = session.execute(
        update(EmailQueue)
        .where(
            EmailQueue.id.in_([e.id for e in emails]),
            EmailQueue.claim_token == claim.token,
            EmailQueue.status == EmailStatus.sending,
        )
        .values(lease_expires_at=now + timedelta(seconds=settings.email_lease_seconds), updated_at=now)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    claim.leased_at = leased_at
    return result.rowcount == len(emails)


def fail_abandoned(session: Session) -> int:
    """Emails whose last allowed attempt died with its worker: failed, with the reason."""
    now = utcnow()
    result = session.execute(
        update(EmailQueue)
        .where(
            EmailQueue.status == EmailStatus.sending,
            EmailQueue.lease_expires_at < now,
            EmailQueue.attempts >= EmailQueue.max_attempts,
        )
        .values(
            status=EmailStatus.failed,
            claim_token=None,
            lease_expires_at=None,
            last_error="the worker sending the last allowed attempt stopped before reporting its outcome",
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount
