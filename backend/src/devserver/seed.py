"""Demo data for `make run`: one organization, two users, a board with tasks in every column and a few
notifications in both inboxes. Running it again changes nothing.

Only the first task, the one the README moves, is plain: the rest of the board is made without status
changes, so the sink holds nothing but the invitation and what the visitor does."""

from sqlalchemy.orm import Session

from src.auth.models import User
from src.auth.security import hash_password
from src.auth.service import get_user_by_email
from src.db import utcnow
from src.invitations import service as invitations
from src.notifications.service import NotificationService
from src.orgs.models import Role
from src.orgs.service import create_org
from src.tasks import service as tasks
from src.tasks.models import Task, TaskEvent, TaskStatus

DEMO_PASSWORD = "herald-demo"
DEMO_USERS = (
    ("alice@demo.herald.dev", "Alice Owner"),
    ("bob@demo.herald.dev", "Bob Developer"),
)
# (title, status, reported by Alice, assigned to the other user, watched by the other user)
DEMO_BOARD = (
    ("Write the onboarding checklist", TaskStatus.todo, True, False, True),
    ("Rotate the SMTP credentials", TaskStatus.todo, False, True, False),
    ("Digest emails for busy watchers", TaskStatus.in_progress, True, True, True),
    ("Dark mode for the board", TaskStatus.in_progress, False, False, True),
    ("Retry failed emails from the outbox", TaskStatus.in_review, True, True, False),
    ("Ship the notification bell", TaskStatus.done, False, True, True),
    ("Set up PostgreSQL backups", TaskStatus.done, True, False, False),
    ("Fax gateway", TaskStatus.cancelled, False, False, False),
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
        _seed_board(session, org.id, owner, developer)
    return [(email, DEMO_PASSWORD) for email, _name in DEMO_USERS]


def _seed_board(session: Session, org_id: int, owner: User, developer: User) -> None:
    """Tasks made as people make them (assigning one notifies its assignee), then put in their column
    with the event a move records, but without the emails a move sends."""
    for title, status, by_owner, assign_other, other_watches in DEMO_BOARD:
        reporter, other = (owner, developer) if by_owner else (developer, owner)
        assignee = other if assign_other else reporter
        watchers = [other.id] if other_watches else []
        task = tasks.create_task(session, org_id, reporter, title, "", assignee.id, watchers)
        if status is not TaskStatus.todo:
            session.add(
                TaskEvent(
                    task_id=task.id, actor_id=reporter.id, kind="status_changed",
                    old_value=TaskStatus.todo.value, new_value=status.value,
                )
            )  # fmt: skip
            task.status = status
    NotificationService.broadcast(
        session, org_id, "announcement", "Welcome to the Demo Co board",
        "Drag a card to another column and watch the bell of whoever watches it.", {"author_id": owner.id},
    )  # fmt: skip
    session.commit()
