"""Suppressed addresses: where mail must stop, because the address cannot receive it (a permanent
SMTP refusal, a SendGrid bounce or drop) or its owner reported it as spam.

Delivery checks the addresses of every claim here, so an address suppressed after its emails were
queued still gets none: they end `suppressed`. Lifting deletes the row; the next email goes out,
and emails already `suppressed` stay so unless retried (`EmailService.retry`).
"""

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, delete, func, select
from sqlalchemy.orm import Session

from src.auth.models import User
from src.db import insert_ignoring_duplicates, utcnow
from src.emails.models import EmailQueue, Suppression
from src.orgs.models import Membership

_DETAIL_CHARS = 1000


def address_key(address: str) -> str:
    """How a suppression names an address: mailbox names differ in case only in theory."""
    return address.strip().lower()


@dataclass
class NewSuppression:
    address: str
    reason: str  # "rejected" (SMTP 5xx on RCPT TO), "bounce", "dropped" or "spamreport"
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


def suppressed_among(session: Session, addresses: list[str]) -> dict[str, Suppression]:
    """The suppressions of these addresses, by `address_key`."""
    keys = {address_key(a) for a in addresses}
    if not keys:
        return {}
    return {s.email: s for s in session.scalars(select(Suppression).where(Suppression.email.in_(keys)))}


def _of_org(org_id: int) -> ColumnElement[bool]:
    """An organization's admins see the suppressions of its members and of the addresses its
    outbox mailed: what they could already see, not who else Herald ever mailed."""
    members = (
        select(func.lower(User.email))
        .join(Membership, Membership.user_id == User.id)
        .where(Membership.org_id == org_id)
    )
    recipients = select(func.lower(EmailQueue.to_email)).where(EmailQueue.org_id == org_id)
    return Suppression.email.in_(members.union(recipients))


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
