"""An organization's outbox, for its owners and admins: watch what was sent, retry or cancel."""

from typing import Annotated

from fastapi import APIRouter, Query

from src.auth.deps import CurrentUser, DbSession
from src.emails.models import EmailQueue, EmailStatus
from src.emails.schemas import EmailOut, EmailPage
from src.emails.service import EmailService
from src.errors import Conflict, NotFound
from src.orgs.service import require_manager
from src.validation import MAX_ID, PathId

router = APIRouter(prefix="/orgs/{org_id}/emails", tags=["emails"])


@router.get("")
def list_emails(
    org_id: PathId,
    user: CurrentUser,
    session: DbSession,
    status: EmailStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> EmailPage:
    require_manager(session, org_id, user)
    items = EmailService.listing(session, status, limit, offset, org_id=org_id)
    return EmailPage(
        items=[EmailOut.model_validate(e) for e in items], counts=EmailService.stats(session, org_id)
    )


def _change(session: DbSession, org_id: int, email_id: int, user: CurrentUser, action: str) -> EmailOut:
    require_manager(session, org_id, user)
    email = session.get(EmailQueue, email_id)
    if email is None or email.org_id != org_id:
        raise NotFound("email not found")
    change, rule = {
        "retry": (EmailService.retry, "only failed, cancelled or suppressed emails can be retried"),
        "cancel": (EmailService.cancel, "only pending emails can be cancelled"),
    }[action]
    if not change(session, [email_id], org_id=org_id):
        raise Conflict(f"{rule}; this one is {email.status.value}")
    session.refresh(email)
    return EmailOut.model_validate(email)


@router.post("/{email_id}/retry")
def retry_email(org_id: PathId, email_id: PathId, user: CurrentUser, session: DbSession) -> EmailOut:
    """A failed, cancelled or suppressed email gets a fresh set of attempts."""
    return _change(session, org_id, email_id, user, "retry")


@router.post("/{email_id}/cancel")
def cancel_email(org_id: PathId, email_id: PathId, user: CurrentUser, session: DbSession) -> EmailOut:
    """A pending email will not be sent."""
    return _change(session, org_id, email_id, user, "cancel")
