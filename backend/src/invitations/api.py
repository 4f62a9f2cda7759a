from fastapi import APIRouter, Request, status
from fastapi.responses import Response

from src.auth.deps import CurrentUser, DbSession
from src.idempotency.deps import Idempotent
from src.invitations import service
from src.invitations.models import Invitation
from src.invitations.schemas import InvitationIn, InvitationOut, ReceivedInvitationOut
from src.orgs.schemas import MemberOut
from src.ratelimit import limit
from src.validation import PathId

router = APIRouter(tags=["invitations"])


@router.post("/orgs/{org_id}/members", status_code=status.HTTP_202_ACCEPTED, response_model=InvitationOut)
def invite_member(
    org_id: PathId,
    body: InvitationIn,
    user: CurrentUser,
    session: DbSession,
    idempotent: Idempotent,
    request: Request,
) -> InvitationOut | Response:
    """Invite an address (owners and admins): it becomes a member only once its owner accepts."""

    def invite() -> InvitationOut:
        limit(request, "invite", account=user.id)  # after the key's claim: a replay counts no invitation
        invitation = service.invite(session, org_id, user, body.email, body.role)
        return InvitationOut.model_validate(invitation, from_attributes=True)

    return idempotent.run(invite)


@router.get("/orgs/{org_id}/invitations", response_model=list[InvitationOut])
def org_invitations(org_id: PathId, user: CurrentUser, session: DbSession) -> object:
    return service.for_org(session, org_id, user)


@router.delete("/orgs/{org_id}/invitations/{invitation_id}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_invitation(org_id: PathId, invitation_id: PathId, user: CurrentUser, session: DbSession) -> None:
    service.revoke(session, org_id, invitation_id, user)


@router.get("/invitations")
def my_invitations(user: CurrentUser, session: DbSession) -> list[ReceivedInvitationOut]:
    return [_received(invitation) for invitation in service.received(session, user)]


@router.post("/invitations/{invitation_id}/accept", response_model=MemberOut)
def accept_invitation(
    invitation_id: PathId, user: CurrentUser, session: DbSession, request: Request
) -> object:
    limit(request, "invite_reply", account=user.id)
    return service.accept(session, invitation_id, user)


@router.post("/invitations/{invitation_id}/decline", status_code=status.HTTP_204_NO_CONTENT)
def decline_invitation(
    invitation_id: PathId, user: CurrentUser, session: DbSession, request: Request
) -> None:
    limit(request, "invite_reply", account=user.id)
    service.decline(session, invitation_id, user)


def _received(invitation: Invitation) -> ReceivedInvitationOut:
    return ReceivedInvitationOut(
        id=invitation.id,
        org_id=invitation.org_id,
        org_name=invitation.org.name,
        invited_by=invitation.invited_by.name if invitation.invited_by else None,
        role=invitation.role,
        created_at=invitation.created_at,
        expires_at=invitation.expires_at,
    )
