"""Demo data for `make run`: one organization, two users, one task. Running it again changes nothing."""

from sqlalchemy.orm import Session

from src.auth.models import User
from src.auth.security import hash_password
from src.auth.service import get_user_by_email
from src.db import utcnow
from src.invitations import service as invitations
from src.orgs.models import Role
from src.orgs.service import create_org
from src.tasks.models import Task

DEMO_PASSWORD = "herald-demo"
DEMO_USERS = (
    ("alice@demo.herald.dev", "Alice Owner"),
    ("bob@demo.herald.dev", "Bob Developer"),
)


def seed_demo(session: Session) -> list[tuple[str, str]]:
    """Create the demo organization once; return the (email, password) logins. Bob joins the way
    anyone does: Alice invites him and he accepts."""
    if get_user_by_email(session, DEMO_USERS[0][0]) is None:
        owner, developer = (
            User(
                email=email, name=name, password_hash=hash_password(DEMO_PASSWORD), email_verified_at=utcnow()
            )
            for email, name in DEMO_USERS
        )
        session.add_all([owner, developer])
        session.flush()
        org, _membership = create_org(session, owner, "Demo Co")
        invitation = invitations.invite(session, org.id, owner, developer.email, Role.member)
        invitations.accept(session, invitation.id, developer)
        session.add(
            Task(
                org_id=org.id,
                title="Try Herald: move me to in_progress",
                description="Change my status as Bob and watch Alice's email arrive in the sink.",
                reporter_id=owner.id,
                assignee_id=developer.id,
            )
        )
        session.commit()
    return [(email, DEMO_PASSWORD) for email, _name in DEMO_USERS]
