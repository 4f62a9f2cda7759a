"""Retention: what the daily job deletes, in batches; its dry run; a stream resuming from before it."""

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from src.db import SessionLocal, utcnow
from src.emails import cli, retention
from src.emails.models import EmailAttempt, EmailQueue, EmailStatus
from src.emails.service import EmailService
from src.notifications import retention as notification_retention
from src.notifications.models import Notification, NotificationRead, NotificationSequence
from src.ops.retention import purge_expired
from tests.live import SseClient
from tests.test_notifications import move, servers, stream_url, team  # noqa: F401 (fixtures)

DAY = timedelta(days=1)


@pytest.fixture(autouse=True)
def forget_purges():
    """The sequence row outlives each test's tables: later streams must not think anything purged."""
    yield
    with SessionLocal() as session:
        session.execute(update(NotificationSequence).values(purged_through=0))
        session.commit()


def email(status: EmailStatus, age: timedelta, attempts: int = 0) -> int:
    """An outbox row in `status`, last changed `age` ago, with `attempts` attempt rows."""
    with SessionLocal() as session:
        row = EmailService.queue_email(
            session, to_email="old@example.com", subject="Old", body_text="old", wake_worker=False
        )
        session.flush()
        session.execute(
            update(EmailQueue).where(EmailQueue.id == row.id).values(status=status, updated_at=utcnow() - age)
        )
        for n in range(attempts):
            session.add(EmailAttempt(email_id=row.id, attempt=n + 1, outcome="sent", duration_ms=1.0))
        session.commit()
        return row.id


def test_sent_emails_go_after_30_days_failed_and_cancelled_after_90_in_batches(db, capsys):
    gone = [
        email(EmailStatus.sent, 31 * DAY, attempts=2),
        email(EmailStatus.sent, 400 * DAY, attempts=1),
        email(EmailStatus.failed, 91 * DAY, attempts=5),
        email(EmailStatus.cancelled, 91 * DAY),
        email(EmailStatus.suppressed, 91 * DAY),
    ]
    kept = [
        email(EmailStatus.sent, 29 * DAY, attempts=1),
        email(EmailStatus.failed, 89 * DAY, attempts=5),
        email(EmailStatus.pending, 400 * DAY),  # never sent: not retention's to delete
        email(EmailStatus.sending, 400 * DAY),
    ]

    assert cli.main(["purge", "--dry-run"]) == 0
    assert capsys.readouterr().out == "would delete 5 emails, 8 email_attempts, 0 notifications\n"
    with SessionLocal() as session:
        assert session.scalar(select(EmailQueue.id).where(EmailQueue.id.in_(gone)).limit(1)) is not None

    with SessionLocal() as session:
        assert retention.purge(session, batch=3) == {"emails": 5, "email_attempts": 8}  # two batches
        assert sorted(session.scalars(select(EmailQueue.id))) == sorted(kept)
        assert sorted(set(session.scalars(select(EmailAttempt.email_id)))) == sorted(kept[:2])
    assert cli.main(["purge"]) == 0
    assert capsys.readouterr().out == "deleted 0 emails, 0 email_attempts, 0 notifications\n"


def notification(org_id: int, recipient_id: int | None, age: timedelta, seq: int | None, read_by=None) -> int:
    with SessionLocal() as session:
        row = Notification(
            org_id=org_id,
            recipient_id=recipient_id,
            type="test",
            title="t",
            created_at=utcnow() - age,
            seq=seq,
        )
        session.add(row)
        session.flush()
        if read_by is not None:
            session.add(NotificationRead(notification_id=row.id, user_id=read_by))
        session.commit()
        return row.id


def test_read_and_broadcast_notifications_go_after_90_days_and_streams_learn_how_far(db, make_user, make_org):
    alice, bob = make_user("alice"), make_user("bob")
    org_id = make_org(alice, bob)
    with SessionLocal() as session:
        base = session.scalar(select(NotificationSequence.last_seq)) or 0
    gone = [
        notification(org_id, bob.id, 91 * DAY, base + 1_000_001, read_by=bob.id),
        notification(org_id, None, 91 * DAY, base + 1_000_002),  # an announcement, read or not
    ]
    kept = [
        notification(org_id, bob.id, 91 * DAY, base + 1_000_003),  # unread
        notification(org_id, bob.id, 91 * DAY, base + 1_000_004, read_by=alice.id),  # read, not by Bob
        notification(org_id, bob.id, 89 * DAY, base + 1_000_005, read_by=bob.id),
        notification(org_id, bob.id, 91 * DAY, None),  # not published yet
    ]
    with SessionLocal() as session:
        assert notification_retention.count_expired(session) == 2
        assert notification_retention.purge(session, batch=1) == 2
        remaining = set(session.scalars(select(Notification.id)))
        assert not remaining & set(gone) and set(kept) <= remaining
        assert session.scalar(select(NotificationSequence.purged_through)) == base + 1_000_002


def test_a_stream_resuming_from_before_what_retention_deleted_is_told_to_refetch(servers, team):  # noqa: F811
    api_a, b = servers
    _org, task, alice, bob, _carol = team
    first = SseClient(stream_url(b, bob))
    move(api_a, task, alice, "in_progress")
    seen = first.next()["id"]
    first.close()
    with SessionLocal() as session:
        session.execute(update(NotificationSequence).values(purged_through=seen + 1))
        session.commit()
    resumed = SseClient(stream_url(b, bob), headers={"Last-Event-ID": str(seen)})
    assert "refetch" in resumed.next("reset")["data"]["reason"]
    move(api_a, task, alice, "done")
    assert resumed.next()["data"]["data"]["new_status"] == "done"  # and it goes on live
    resumed.close()

    recent = SseClient(stream_url(b, bob), headers={"Last-Event-ID": str(seen + 1)})
    assert [e for e in recent.drain() if e["event"] == "reset"] == []
    recent.close()


def test_an_email_retried_while_the_purge_runs_is_kept(db, database_url):
    """The retry's UPDATE holds the row when the purge comes to it: the purge leaves it, and once the
    retry commits it is pending again, not deleted by an id read before."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite runs one writer at a time: the purge and the retry cannot interleave")
    old = email(EmailStatus.failed, 91 * DAY, attempts=5)
    with SessionLocal() as retrying:
        retrying.execute(update(EmailQueue).where(EmailQueue.id == old).values(status=EmailStatus.pending))
        purged = {}

        def purge() -> None:
            with SessionLocal() as session:
                purged.update(retention.purge(session))

        purging = threading.Thread(target=purge)
        purging.start()
        purging.join(timeout=2)
        retrying.commit()
    purging.join(timeout=10)
    assert not purging.is_alive() and purged == {"emails": 0, "email_attempts": 0}
    with SessionLocal() as session:
        assert session.get(EmailQueue, old).status == EmailStatus.pending


def test_the_daily_job_purges_both(db):
    email(EmailStatus.sent, 31 * DAY)
    assert purge_expired() == {"emails": 1, "email_attempts": 0, "notifications": 0}
