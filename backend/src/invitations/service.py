"""Invitations: the only way into an organization, so nobody is made a member, or mailed about its
tasks, without saying yes from an address they have confirmed."""

from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload

from src.auth.models import User
from src.auth.service import get_user_by_email, normalize_email
from src.config import settings
from src.db import after_commit, utcnow
from src.emails.rendering import render
from src.emails.service import EmailService
from src.errors import Conflict, Forbidden, Gone, NotFound
from src.invitations.models import Invitation, InvitationStatus
from src.notifications.models import Notification
from src.notifications.service import NotificationService, end_live_streams
from src.orgs.models import Membership, Organization, Role
from src.orgs.service import get_membership, require_manager
from src.preferences.catalogue import INVITATION_RECEIVED
from src.text import one_line


def invite(session: Session, org_id: int, actor: User, email: str, role: Role) -> Invitation:
    """Invite `email` (owners and admins only). The answer is the same whether or not the address
    has an account; one that has also gets an in-app notification."""
    actor_membership = require_manager(session, org_id, actor)
    if role == Role.owner and actor_membership.role != Role.owner:
        raise Forbidden("only an owner can invite another owner")
    email = normalize_email(email)
    invitee = get_user_by_email(session, email)
    if invitee is not None and get_membership(session, org_id, invitee.id) is not None:
        raise Conflict("this address already belongs to a member of the organization")
    now = utcnow()
    session.execute(  # an invitation that ran out makes room for a new one
        update(Invitation)
        .where(Invitation.org_id == org_id, Invitation.email == email)
        .where(Invitation.status == InvitationStatus.pending, Invitation.expires_at <= now)
        .values(status=InvitationStatus.expired)
    )
    invitation = Invitation(
        org_id=org_id, email=email, role=role, invited_by_id=actor.id, created_at=now,
        expires_at=now + timedelta(days=settings.invitation_days),
    )  # fmt: skip
    session.add(invitation)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise Conflict(
            "an invitation to this address is already pending; revoke it to send another"
        ) from None
    org = session.get_one(Organization, org_id)
    _mail_invitation(session, invitation, org, actor)
    if invitee is not None and invitee.email_verified_at is not None:  # the address is theirs
        NotificationService.notify(
            session, org_id, [invitee.id], INVITATION_RECEIVED,
            f"{actor.name} invited you to join {org.name}", data={"invitation_id": invitation.id},
        )  # fmt: skip
    session.commit()
    return invitation


def received(session: Session, user: User) -> list[Invitation]:
    """The caller's open invitations: those to their address, pending and not expired. None until
    the address is confirmed: whoever registered an address they do not own sees nothing of it."""
    if user.email_verified_at is None:
        return []
    return list(
        session.scalars(
            select(Invitation)
            .options(joinedload(Invitation.org), joinedload(Invitation.invited_by))
            .where(Invitation.email == normalize_email(user.email))
            .where(Invitation.status == InvitationStatus.pending, Invitation.expires_at > utcnow())
            .order_by(Invitation.id)
        )
    )


def accept(session: Session, invitation_id: int, user: User) -> Membership:
    invitation = _open_invitation_for(session, invitation_id, user)
    _answer(session, invitation, user, InvitationStatus.accepted)
    membership = get_membership(session, invitation.org_id, user.id)
    if membership is None:
        membership = Membership(org_id=invitation.org_id, user_id=user.id, role=invitation.role)
        session.add(membership)
    after_commit(session, lambda: end_live_streams(user.id))  # they reconnect into the new org
    try:
        session.commit()
    except IntegrityError:  # accepted twice at the same instant
        session.rollback()
        raise Conflict("this invitation was already answered") from None
    return membership


def decline(session: Session, invitation_id: int, user: User) -> None:
    invitation = _open_invitation_for(session, invitation_id, user)
    _answer(session, invitation, user, InvitationStatus.declined)
    session.commit()


def for_org(session: Session, org_id: int, actor: User) -> list[Invitation]:
    require_manager(session, org_id, actor)
    return list(
        session.scalars(select(Invitation).where(Invitation.org_id == org_id).order_by(Invitation.id.desc()))
    )


def revoke(session: Session, org_id: int, invitation_id: int, actor: User) -> Invitation:
    require_manager(session, org_id, actor)
    invitation = session.scalar(
        select(Invitation)
        .where(Invitation.id == invitation_id, Invitation.org_id == org_id)
        .with_for_update()
    )
    if invitation is None:
        raise NotFound("invitation not found")
    if invitation.status != InvitationStatus.pending:
        raise Conflict(f"this invitation is {invitation.status.value}; only a pending one can be revoked")
    invitation.status, invitation.responded_at = InvitationStatus.revoked, utcnow()
    session.commit()
    return invitation


def _open_invitation_for(session: Session, invitation_id: int, user: User) -> Invitation:
    """The invitation, locked, if it was sent to the caller's confirmed address and can still be
    answered (accepted or declined). Another address's invitation does not exist for the caller (404)."""
    if user.email_verified_at is None:
        raise Forbidden("confirm your email address first: an invitation goes to whoever owns the address")
    invitation = session.scalar(
        select(Invitation)
        .where(Invitation.id == invitation_id, Invitation.email == normalize_email(user.email))
        .with_for_update()
    )
    if invitation is None:
        raise NotFound("invitation not found")
    if invitation.status != InvitationStatus.pending:
        raise Conflict(f"this invitation was already {invitation.status.value}")
    if invitation.expires_at <= utcnow():
        raise Gone("this invitation has expired; ask for a new one")
    return invitation


def _answer(session: Session, invitation: Invitation, user: User, answer: InvitationStatus) -> None:
    """Record the invitee's answer; the notification that asked the question is then read."""
    invitation.status, invitation.responded_at = answer, utcnow()
    NotificationService.mark_read_where(
        session,
        user.id,
        Notification.type == INVITATION_RECEIVED,
        Notification.org_id == invitation.org_id,
        Notification.recipient_id == user.id,
    )


def _mail_invitation(session: Session, invitation: Invitation, org: Organization, actor: User) -> None:
    text, html = render(
        "invitation",
        inviter_name=one_line(actor.name),
        org_name=one_line(org.name),
        role=invitation.role.value,
        email=invitation.email,
        invitations_url=f"{settings.public_url}/#/invitations",
        expires=invitation.expires_at.strftime("%Y-%m-%d %H:%M UTC"),
    )
    EmailService.queue_email(
        session,
        to_email=invitation.email,
        subject=one_line(f"{actor.name} invited you to {org.name} on Herald"),
        body_text=text,
        body_html=html,
        org_id=org.id,
        dedupe_key=f"invitation:{invitation.id}",
    )
