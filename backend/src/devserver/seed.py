"""Demo data for `make run`: one organization, two users, one task. Running it again changes nothing."""

from sqlalchemy.orm import Session

from src.auth.models import User
from src.auth.security import hash_password
from src.auth.service import get_user_by_email
from src.orgs.models import Membership, Organization, Role
from src.tasks.models import Task

DEMO_PASSWORD = "herald-demo"
DEMO_USERS = (
    ("alice@demo.herald.dev", "Alice Owner", Role.owner),
    ("bob@demo.herald.dev", "Bob Developer", Role.member),
)


def seed_demo(session: Session) -> list[tuple[str, str]]:
    """Create the demo organization once; return the (email, password) logins."""
    if get_user_by_email(session, DEMO_USERS[0][0]) is None:
        org = Organization(name="Demo Co")
        session.add(org)
        users = []
        for email, name, role in DEMO_USERS:
            user = User(email=email, name=name, password_hash=hash_password(DEMO_PASSWORD))
            session.add(user)
            session.flush()
            session.add(Membership(org_id=org.id, user_id=user.id, role=role))
            users.append(user)
        owner, developer = users
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
    return [(email, DEMO_PASSWORD) for email, _name, _role in DEMO_USERS]
