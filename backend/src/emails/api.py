"""An organization's outbox, for its owners and admins: watch what was sent, retry or cancel."""

from typing import Annotated

from fastapi import APIRouter, Query

from src.auth.deps import CurrentUser, DbSession
from src.emails.models import EmailQueue, EmailStatus
from src.emails.schemas import EmailOut, EmailPage
from src.emails.service import EmailService
from src.errors import Conflict, NotFound
from src.orgs.service import require_manager

router = APIRouter(prefix="/orgs/{org_id}/emails", tags=["emails"])


@router.get("")
def list_emails(
    org_id: int,
    user: CurrentUser,
    session: DbSession,
    status: EmailStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> EmailPage:
    require_manager(session, org_id, user)
    items = EmailService.listing(session, status, limit, offset, org_id=org_id)
    return EmailPage(
        items=[EmailOut.model_validate(e) for e in items], counts=EmailService.stats(session, org_id)
    )


def _one(session: DbSession, org_id: int, email_id: int) -> EmailQueue:
    email = session.get(EmailQueue, email_id)
    if email is None or email.org_id != org_id:
        raise NotFound("email not found")
    return email


@router.post("/{email_id}/retry")
def retry_email(org_id: int, email_id: int, user: CurrentUser, session: DbSession) -> EmailOut:
    """A failed or cancelled email gets a fresh set of attempts."""
    require_manager(session, org_id, user)
    email = _one(session, org_id, email_id)
    if not EmailService.retry(session, [email_id], org_id=org_id):
        raise Conflict(f"only failed or cancelled emails can be retried; this one is {email.status.value}")
    session.refresh(email)
    return EmailOut.model_validate(email)


@router.post("/{email_id}/cancel")
def cancel_email(org_id: int, email_id: int, user: CurrentUser, session: DbSession) -> EmailOut:
    """A pending email will not be sent."""
    require_manager(session, org_id, user)
    email = _one(session, org_id, email_id)
    if not EmailService.cancel(session, [email_id], org_id=org_id):
        raise Conflict(f"only pending emails can be cancelled; this one is {email.status.value}")
    session.refresh(email)
    return EmailOut.model_validate(email)
