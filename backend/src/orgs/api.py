from fastapi import APIRouter, Request, status
from fastapi.responses import Response

from src.auth.deps import CurrentUser, DbSession
from src.idempotency.deps import Idempotent
from src.orgs import service
from src.orgs.models import Membership, Organization
from src.orgs.schemas import MemberIn, MemberOut, OrgIn, OrgOut
from src.ratelimit import limit
from src.validation import PathId

router = APIRouter(prefix="/orgs", tags=["organizations"])


def _org_out(org: Organization, membership: Membership) -> OrgOut:
    return OrgOut(id=org.id, name=org.name, role=membership.role, created_at=org.created_at)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=OrgOut)
def create_org(
    body: OrgIn, user: CurrentUser, session: DbSession, idempotent: Idempotent
) -> OrgOut | Response:
    return idempotent.run(lambda: _org_out(*service.create_org(session, user, body.name)))


@router.get("")
def list_orgs(user: CurrentUser, session: DbSession) -> list[OrgOut]:
    return [_org_out(org, m) for org, m in service.list_orgs(session, user)]


@router.get("/{org_id}")
def get_org(org_id: PathId, user: CurrentUser, session: DbSession) -> OrgOut:
    return _org_out(*service.get_org(session, org_id, user))


@router.get("/{org_id}/members", response_model=list[MemberOut])
def list_members(org_id: PathId, user: CurrentUser, session: DbSession) -> object:
    return service.list_members(session, org_id, user)


@router.post("/{org_id}/members", status_code=status.HTTP_201_CREATED, response_model=MemberOut)
def add_member(
    org_id: PathId,
    body: MemberIn,
    user: CurrentUser,
    session: DbSession,
    idempotent: Idempotent,
    request: Request,
) -> MemberOut | Response:
    limit(request, "invite", account=user.id)
    return idempotent.run(
        lambda: MemberOut.model_validate(service.add_member(session, org_id, user, body.email, body.role))
    )


@router.delete("/{org_id}/members/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
def remove_member(org_id: PathId, user_id: PathId, user: CurrentUser, session: DbSession) -> None:
    service.remove_member(session, org_id, user, user_id)
