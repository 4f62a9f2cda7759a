"""Suppressed addresses, for an organization's owners and admins: why a member or recipient gets no
email, and lifting that. They see the suppressions of their members and of the addresses their
organization mailed, never the rest; a suppression lifted is lifted for every organization."""

from typing import Annotated

from fastapi import APIRouter, Query, status

from src.auth.deps import CurrentUser, DbSession
from src.emails import suppressions
from src.emails.schemas import SuppressionOut, SuppressionPage
from src.errors import NotFound
from src.orgs.service import require_manager
from src.validation import MAX_ID, PathId

router = APIRouter(prefix="/orgs/{org_id}/suppressions", tags=["emails"])


@router.get("")
def list_suppressions(
    org_id: PathId,
    user: CurrentUser,
    session: DbSession,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> SuppressionPage:
    require_manager(session, org_id, user)
    listed = suppressions.listing(session, limit, offset, org_id=org_id)
    return SuppressionPage(items=[SuppressionOut.model_validate(s) for s in listed])


@router.delete("/{suppression_id}", status_code=status.HTTP_204_NO_CONTENT)
def lift_suppression(org_id: PathId, suppression_id: PathId, user: CurrentUser, session: DbSession) -> None:
    """The next email to the address goes out; emails already `suppressed` stay so unless retried."""
    require_manager(session, org_id, user)
    if not suppressions.lift(session, ids=[suppression_id], org_id=org_id):
        raise NotFound("suppression not found")
