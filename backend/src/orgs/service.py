"""Organizations and who belongs to them: the boundary every other query is scoped by."""

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from src.auth.models import User
from src.db import after_commit, utcnow
from src.errors import Conflict, Forbidden, NotFound
from src.invitations.models import Invitation, InvitationStatus
from src.notifications.service import end_live_streams
from src.orgs.models import Membership, Organization, Role
from src.preferences.models import DigestItem
from src.tasks.models import Task, task_watchers

MANAGERS = (Role.owner, Role.admin)


def create_org(session: Session, owner: User, name: str) -> tuple[Organization, Membership]:
    org = Organization(name=name.strip())
    session.add(org)
    session.flush()
    membership = Membership(org_id=org.id, user_id=owner.id, role=Role.owner)
    session.add(membership)
    session.commit()
    return org, membership


def list_orgs(session: Session, user: User) -> list[tuple[Organization, Membership]]:
    rows = session.execute(
        select(Organization, Membership)
        .join(Membership, Membership.org_id == Organization.id)
        .where(Membership.user_id == user.id)
        .order_by(Organization.id)
    )
    return [(org, membership) for org, membership in rows]


def get_membership(session: Session, org_id: int, user_id: int) -> Membership | None:
    return session.scalar(
        select(Membership).where(Membership.org_id == org_id, Membership.user_id == user_id)
    )


def require_member(session: Session, org_id: int, user: User) -> Membership:
    """The caller's membership; an organization they are not in does not exist for them (404)."""
    membership = get_membership(session, org_id, user.id)
    if membership is None:
        raise NotFound("organization not found")
    return membership


def require_manager(session: Session, org_id: int, user: User) -> Membership:
    membership = require_member(session, org_id, user)
    if membership.role not in MANAGERS:
        raise Forbidden("only an owner or admin of the organization can do this")
    return membership


def get_org(session: Session, org_id: int, user: User) -> tuple[Organization, Membership]:
    membership = require_member(session, org_id, user)
    return session.get_one(Organization, org_id), membership


def list_members(session: Session, org_id: int, user: User) -> list[Membership]:
    require_member(session, org_id, user)
    return list(
        session.scalars(select(Membership).where(Membership.org_id == org_id).order_by(Membership.id))
    )


def remove_member(session: Session, org_id: int, actor: User, user_id: int) -> None:
    actor_membership = require_manager(session, org_id, actor)
    membership = get_membership(session, org_id, user_id)
    if membership is None:
        raise NotFound("member not found")
    if membership.role == Role.owner:
        if actor_membership.role != Role.owner:
            raise Forbidden("only an owner can remove an owner")
        # Locked, so two owners removing each other at once cannot leave the organization ownerless.
        owners = session.scalars(
            select(Membership.id)
            .where(Membership.org_id == org_id, Membership.role == Role.owner)
            .with_for_update()
        ).all()
        if len(owners) == 1:
            raise Conflict("an organization must keep at least one owner")
    session.delete(membership)
    # A former member no longer hears about the organization's tasks, by email or live.
    org_tasks = select(Task.id).where(Task.org_id == org_id)
    session.execute(
        update(Task).where(Task.org_id == org_id, Task.assignee_id == user_id).values(assignee_id=None)
    )
    session.execute(
        delete(task_watchers).where(
            task_watchers.c.user_id == user_id, task_watchers.c.task_id.in_(org_tasks)
        )
    )
    # Nor in a digest: what they were owed from its tasks is not theirs to read any more.
    session.execute(
        delete(DigestItem).where(
            DigestItem.org_id == org_id, DigestItem.user_id == user_id, DigestItem.digest_key.is_(None)
        )
    )
    # Invitations they sent stand no longer: an admin removed could come back through one.
    session.execute(
        update(Invitation)
        .where(Invitation.org_id == org_id, Invitation.invited_by_id == user_id)
        .where(Invitation.status == InvitationStatus.pending)
        .values(status=InvitationStatus.revoked, responded_at=utcnow())
    )
    after_commit(session, lambda: end_live_streams(user_id))
    session.commit()


def member_ids(session: Session, org_id: int) -> set[int]:
    return set(session.scalars(select(Membership.user_id).where(Membership.org_id == org_id)))


def member_org_ids(session: Session, user_id: int) -> set[int]:
    return set(session.scalars(select(Membership.org_id).where(Membership.user_id == user_id)))
