"""Digests: one email per window with every event, collapsed per task, exactly once."""

import threading
import time
from datetime import UTC, datetime, timedelta
from email import message_from_string, policy

import pytest
from sqlalchemy import delete, select, text, update

from src.db import SessionLocal, utcnow
from src.emails.models import EmailQueue, EmailStatus
from src.emails.service import EmailService
from src.preferences.models import DigestItem
from src.tasks import digests
from src.tasks.models import Task, TaskEvent
from src.tasks.tasks.digest_tasks import build_digests
from tests.test_emails import wait_until

STATUSES = ["in_progress", "in_review", "done", "in_progress", "done"]


@pytest.fixture
def digest_team(client, make_user, make_org, make_task):
    """Ann reported a task Bob works on; Dave watches it and chose digests. Ann mails at once."""
    ann, bob, dave = make_user("ann"), make_user("bob"), make_user("dave")
    org_id = make_org(ann, bob, dave)
    task = make_task(org_id, ann, bob, dave)
    choice = {"preferences": {"task_status_changed": {"email": "digest"}}}
    assert client.put("/api/me/preferences", json=choice, headers=dave.headers).status_code == 200
    with SessionLocal() as session:
        session.execute(delete(EmailQueue))
        session.commit()
    return task, ann, bob, dave


def five_changes(client, task, ann, bob):
    for n, status in enumerate(STATUSES):
        actor = bob if n % 2 == 0 else ann
        response = client.patch(f"/api/tasks/{task['id']}", json={"status": status}, headers=actor.headers)
        assert response.status_code == 200, response.text


def emails_to(address):
    with SessionLocal() as session:
        return list(
            session.scalars(select(EmailQueue).where(EmailQueue.to_email == address).order_by(EmailQueue.id))
        )


def backdate_items(seconds):
    with SessionLocal() as session:
        session.execute(update(DigestItem).values(created_at=utcnow() - timedelta(seconds=seconds)))
        session.commit()


def after_window():
    """A moment when the window the changes fell in has certainly closed."""
    return utcnow() + timedelta(seconds=3600 + 1)


def test_five_changes_make_one_digest_with_the_collapsed_history(client, digest_team):
    task, ann, bob, dave = digest_team
    before = utcnow()
    five_changes(client, task, ann, bob)
    assert emails_to(dave.email) == []  # nothing at once
    assert len(emails_to(ann.email)) == 3  # Ann's choice is unchanged: immediate (Bob made 3 of them)
    assert digests.build_due(before) == 0  # their window has not closed

    assert digests.build_due(after_window()) == 1
    [digest] = emails_to(dave.email)
    assert digest.subject == "[Acme] 5 changes on 1 task"
    assert digest.dedupe_key.startswith(f"digest:user:{dave.id}:until:")
    message = message_from_string(digest.mime, policy=policy.default)
    plain = message.get_body(("plain",)).get_content()
    assert "Fix login: todo → in_progress → in_review → done → in_progress → done, by Bob and Ann" in plain
    for old, new in zip(["todo", *STATUSES[:-1]], STATUSES, strict=True):
        assert f": {old} → {new}" in plain
    assert plain.count("Bob: ") == 3 and plain.count("Ann: ") == 2
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "/unsubscribe/" in message["List-Unsubscribe"] and "/preferences" in plain

    assert digests.build_due(after_window()) == 0  # an empty window sends nothing
    assert digests.build_due(after_window() + timedelta(hours=5)) == 0
    assert len(emails_to(dave.email)) == 1


def owe(user_id, task_id, org_id, actor_id, statuses):
    """Digest items for a run of status changes, written directly: thousands take a moment."""
    with SessionLocal() as session:
        for old, new in zip(["todo", *statuses[:-1]], statuses, strict=True):
            event = TaskEvent(task_id=task_id, actor_id=actor_id, kind="status_changed", old_value=old,
                              new_value=new)  # fmt: skip
            session.add(event)
            session.flush()
            digests.collect(session, [user_id], org_id, task_id, event.id, "task_status_changed")
        session.commit()


def test_a_burst_of_changes_makes_a_digest_of_bounded_size(client, digest_team, monkeypatch):
    """Thousands of changes (one member flipping a status all afternoon) still make one digest that can
    be sent: each task's latest changes, the first tasks, the rest counted. A digest too large anyway
    (here: the limit lowered) holds back no one else's."""
    task, ann, bob, dave = digest_team
    owe(dave.id, task["id"], task["org_id"], bob.id, ["in_progress", "done"] * 1500)
    with SessionLocal() as session:
        others = [Task(org_id=task["org_id"], title=f"Other {n}", description="", reporter_id=ann.id)
                  for n in range(digests.TASKS_SHOWN + 5)]  # fmt: skip
        session.add_all(others)
        session.commit()
        other_ids = [t.id for t in others]
    for task_id in other_ids:
        owe(dave.id, task_id, task["org_id"], bob.id, ["done"])
    owe(ann.id, task["id"], task["org_id"], bob.id, ["in_review"])

    monkeypatch.setattr(digests.settings, "email_max_body_bytes", 2_000)
    assert digests.build_due(after_window()) == 1  # Ann's, though Dave's was refused
    assert len(emails_to(ann.email)) == 1
    assert emails_to(dave.email) == []
    monkeypatch.undo()

    assert digests.build_due(after_window()) == 1
    [digest] = emails_to(dave.email)
    assert digest.subject == f"[Acme] 3055 changes on {len(other_ids) + 1} tasks"
    plain = message_from_string(digest.mime, policy=policy.default).get_body(("plain",)).get_content()
    assert "Fix login: todo → … → " in plain and "… 2990 earlier changes" in plain
    assert plain.count("Bob: ") == digests.HISTORY_SHOWN + digests.TASKS_SHOWN - 1
    assert "… and 6 more tasks: http" in plain
    assert len(digest.mime) < 100_000


def test_a_member_removed_before_the_digest_gets_nothing_of_the_organization(client, digest_team):
    task, ann, bob, dave = digest_team
    five_changes(client, task, ann, bob)
    removed = client.delete(f"/api/orgs/{task['org_id']}/members/{dave.id}", headers=ann.headers)
    assert removed.status_code == 204
    assert digests.build_due(after_window()) == 0
    assert emails_to(dave.email) == []


def test_the_worker_delivers_one_digest_and_the_next_window_gets_the_next_events(
    client, digest_team, worker, sink
):
    task, ann, bob, dave = digest_team
    five_changes(client, task, ann, bob)
    backdate_items(2 * 3600)
    build_digests.delay()
    build_digests.delay()  # a second beat, at the same moment
    wait_until(lambda: any(m.rcpt_tos == [dave.email] for m in sink.messages), message="the digest")
    time.sleep(1.5)
    assert [m.message["Subject"] for m in sink.messages if m.rcpt_tos == [dave.email]] == [
        "[Acme] 5 changes on 1 task"
    ]

    client.patch(f"/api/tasks/{task['id']}", json={"status": "cancelled"}, headers=bob.headers)
    assert digests.build_due(after_window()) == 1
    latest = emails_to(dave.email)[-1]
    assert latest.subject == "[Acme] 1 change on 1 task" and len(emails_to(dave.email)) == 2


@pytest.mark.parametrize("builders", [2, 8])
def test_concurrent_builders_queue_exactly_one_digest(client, digest_team, builders):
    task, ann, bob, dave = digest_team
    five_changes(client, task, ann, bob)
    window_end = after_window()
    start = threading.Barrier(builders)
    results = []

    def build():
        start.wait()
        results.append(digests.build(dave.id, window_end))

    threads = [threading.Thread(target=build) for _ in range(builders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(results) == [False] * (builders - 1) + [True]
    [digest] = emails_to(dave.email)
    assert digest.subject == "[Acme] 5 changes on 1 task"
    with SessionLocal() as session:
        keys = set(session.scalars(select(DigestItem.digest_key)))
    assert keys == {digest.dedupe_key}


def waiting_on_the_key():
    """How many PostgreSQL sessions wait for a lock inside an INSERT into the outbox."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO email_queue%'"
    )
    with SessionLocal() as session:
        return session.scalar(query)


def test_a_worker_killed_while_building_leaves_the_digest_to_the_next_run(
    client, digest_team, worker, sink, database_url
):
    """The worker is held inside the digest's transaction (its INSERT waits for a row another
    transaction is writing with the same dedupe key) and SIGKILLed there; then two beats run."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite serializes writers before the build starts: nothing to kill inside it")
    task, ann, bob, dave = digest_team
    five_changes(client, task, ann, bob)
    backdate_items(2 * 3600)
    as_of = utcnow()
    key = digests.digest_key(dave.id, digests.window_start("hourly", 0, "UTC", as_of))
    blocker = SessionLocal()
    try:
        EmailService.queue_email(
            blocker,
            to_email="blocker@example.com",
            subject="x",
            body_text="x",
            dedupe_key=key,
            wake_worker=False,
        )
        blocker.flush()
        build_digests.delay(as_of.isoformat())

        wait_until(waiting_on_the_key, message="the worker inside the digest's transaction")
        with SessionLocal() as session:  # its claim is not committed: nobody else sees it
            assert set(session.scalars(select(DigestItem.digest_key))) == {None}
        worker.kill()
    finally:
        blocker.rollback()
        blocker.close()
    wait_until(lambda: not waiting_on_the_key(), message="the killed worker's transaction to end")
    worker.start()
    worker.wait_until_connected()
    build_digests.delay(as_of.isoformat())
    build_digests.delay(as_of.isoformat())
    wait_until(
        lambda: any(m.rcpt_tos == [dave.email] for m in sink.messages), timeout=30, message="the digest"
    )
    time.sleep(1.5)
    assert len([m for m in sink.messages if m.rcpt_tos == [dave.email]]) == 1
    [digest] = emails_to(dave.email)
    assert digest.dedupe_key == key and digest.status == EmailStatus.sent
    assert emails_to("blocker@example.com") == []


def test_daily_digests_go_out_at_the_local_hour(client, digest_team):
    task, ann, bob, dave = digest_team
    daily = {"digest": {"frequency": "daily", "hour": 9, "timezone": "Europe/Paris"}}
    assert client.put("/api/me/preferences", json=daily, headers=dave.headers).status_code == 200
    five_changes(client, task, ann, bob)
    with SessionLocal() as session:  # the changes happened on 2026-03-10 at 07:30 in Paris
        at = datetime(2026, 3, 10, 6, 30, tzinfo=UTC)
        session.execute(update(DigestItem).values(created_at=at))
        session.execute(update(TaskEvent).where(TaskEvent.kind == "status_changed").values(created_at=at))
        session.commit()
    assert digests.build_due(datetime(2026, 3, 10, 7, 59, tzinfo=UTC)) == 0  # 08:59 in Paris
    assert digests.build_due(datetime(2026, 3, 10, 8, 0, tzinfo=UTC)) == 1  # 09:00 in Paris
    [digest] = emails_to(dave.email)
    assert digest.dedupe_key == f"digest:user:{dave.id}:until:20260310T080000Z"
    assert digest.mime.count("2026-03-10 07:30") == 2 * len(STATUSES)  # in Dave's time, text and HTML


def test_window_boundaries():
    summer = datetime(2026, 7, 1, 5, 0, tzinfo=UTC)  # 07:00 in Paris (UTC+2)
    assert digests.window_start("daily", 9, "Europe/Paris", summer) == datetime(2026, 6, 30, 7, 0, tzinfo=UTC)
    assert digests.window_start("daily", 6, "Europe/Paris", summer) == datetime(2026, 7, 1, 4, 0, tzinfo=UTC)
    assert digests.window_start("hourly", 0, "UTC", datetime(2026, 7, 1, 5, 59, 59, tzinfo=UTC)) == datetime(
        2026, 7, 1, 5, 0, tzinfo=UTC
    )
