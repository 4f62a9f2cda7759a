"""Suppressed addresses: where mail must stop, because the address cannot receive it (a permanent
SMTP refusal, a SendGrid bounce or drop, an SES permanent bounce) or its owner reported it as spam.

Delivery checks the addresses of every claim here, so an address suppressed after its emails were
queued still gets none: they end `suppressed`. Lifting deletes the row; the next email goes out,
and emails already `suppressed` stay so unless retried (`EmailService.retry`).
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, bindparam, delete, func, select
from sqlalchemy.orm import Session

from src.auth.models import User
from src.db import insert_ignoring_duplicates, utcnow
from src.emails.models import Suppression
from src.orgs.models import Membership

_DETAIL_CHARS = 1000


def address_key(address: str) -> str:
    """How a suppression names an address: mailbox names differ in case only in theory."""
    return address.strip().lower()


@dataclass
class NewSuppression:
    address: str
    # "rejected" (SMTP 5xx on RCPT TO), "bounce" (SendGrid's, or SES's permanent one), "dropped",
    # "spamreport" (SendGrid) or "complaint" (SES)
    reason: str
    detail: str = ""

    def row(self) -> dict[str, Any]:
        return {
            "email": address_key(self.address),
            "reason": self.reason,
            "detail": self.detail[:_DETAIL_CHARS],
            "created_at": utcnow(),
        }


def suppress(session: Session, suppressions: list[NewSuppression]) -> int:
    """Suppress these addresses, in the caller's transaction; one already suppressed keeps its
    first reason. Returns how many were new."""
    rows = list({row["email"]: row for row in (s.row() for s in suppressions)}.values())
    return insert_ignoring_duplicates(session, Suppression.__table__, rows) if rows else 0


@dataclass(frozen=True, slots=True)
class Suppressed:
    """What delivery says of an address it does not send to."""

    email: str
    reason: str
    detail: str
    created_at: datetime


_table = Suppression.__table__
# Built once and run in Core: every wake-up of a worker runs it, and as an ORM query built per call
# it took a fifth of the CPU a worker process spends on a wake-up.
_SUPPRESSED = select(_table.c.email, _table.c.reason, _table.c.detail, _table.c.created_at).where(
    _table.c.email.in_(bindparam("keys", expanding=True))
)


def suppressed_among(session: Session, addresses: list[str]) -> dict[str, Suppressed]:
    """The suppressions of these addresses, by `address_key`."""
    keys = sorted({address_key(a) for a in addresses})
    if not keys:
        return {}
    rows = session.connection().execute(_SUPPRESSED, {"keys": keys})
    return {row.email: Suppressed(*row) for row in rows}


def _of_org(org_id: int) -> ColumnElement[bool]:
    """An organization's admins see and lift the suppressions of its members' addresses, no others.
    Not those of every address its outbox mailed: an invitation queues an email to any address, so
    that would show any address's suppression, and lift it for every organization, to whoever
    invites it. A non-member's suppressed email still shows as `suppressed` in the outbox."""
    members = (
        select(func.lower(User.email))
        .join(Membership, Membership.user_id == User.id)
        .where(Membership.org_id == org_id)
    )
    return Suppression.email.in_(members)


def listing(session: Session, limit: int, offset: int = 0, org_id: int | None = None) -> list[Suppression]:
    """The newest suppressions first; with `org_id`, only those its admins may see."""
    query = select(Suppression)
    if org_id is not None:
        query = query.where(_of_org(org_id))
    return list(session.scalars(query.order_by(Suppression.id.desc()).limit(limit).offset(offset)))


def lift(
    session: Session, *, ids: list[int] | None = None, addresses: list[str] | None = None,
    org_id: int | None = None,
) -> list[Suppression]:  # fmt: skip
    """Lift suppressions named by id or address (and, with `org_id`, visible to its admins); the
    next email to each goes out again. Returns those lifted."""
    if ids is None and addresses is None:
        raise ValueError("name the suppressions to lift")
    query = delete(Suppression)
    if ids is not None:
        query = query.where(Suppression.id.in_(ids))
    if addresses is not None:
        query = query.where(Suppression.email.in_([address_key(a) for a in addresses]))
    if org_id is not None:
        query = query.where(_of_org(org_id))
    lifted = list(session.scalars(query.returning(Suppression).execution_options(synchronize_session=False)))
    session.commit()
    return lifted
