"""The email pipeline against a real worker process, a real Redis, a real SMTP sink, on both databases;
its delivery guarantees also with RabbitMQ as the Celery broker."""

import time
from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import delete, func, select, update

from src.db import SessionLocal, utcnow
from src.emails.connections import kept_connections
from src.emails.delivery import deliver
from src.emails.models import EmailAttempt, EmailQueue, EmailStatus
from src.emails.service import EmailService
from src.emails.tasks.email_tasks import process_email_queue
from tests.conftest import BROKERS, WORKER_LEASE_SECONDS

on_each_broker = pytest.mark.parametrize("broker", BROKERS, indirect=True)


def wait_until(condition, timeout=20.0, interval=0.05, message="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def rows():
    with SessionLocal() as session:
        return list(session.scalars(select(EmailQueue).order_by(EmailQueue.id)))


def attempts_of(email_id):
    with SessionLocal() as session:
        return [
            (a.outcome, a.smtp_code)
            for a in session.scalars(
                select(EmailAttempt).where(EmailAttempt.email_id == email_id).order_by(EmailAttempt.id)
            )
        ]


def all_status(status, count):
    current = rows()
    return len(current) == count and all(r.status == status for r in current)


def queue(count, publish=True, **overrides):
    """Queue `count` emails through the service; without `publish`, no wake-up reaches Redis."""
    with SessionLocal() as session:
        emails = [
            EmailService.queue_email(
                session,
                to_email=f"user{n}@example.com",
                subject=f"Message {n}",
                body_text=f"Body {n}",
                wake_worker=publish,
                **overrides,
            )
            for n in range(count)
        ]
        session.commit()
    return [e.id for e in emails]


def kick_processor(timeout=30.0):
    """Publish the beat job, retrying while the broker is still coming back."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            process_email_queue.delay()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.fixture
def team(client, make_user, make_org, worker, sink):
    """Four members and a task; the emails inviting them delivered and then out of the way."""
    alice, bob, carol, dave = (make_user(n) for n in ("alice", "bob", "carol", "dave"))
    org_id = make_org(alice, bob, carol, dave)
    wait_until(lambda: all_status(EmailStatus.sent, 3), message="the invitations' emails sent")
    with SessionLocal() as session:
        session.execute(delete(EmailQueue))
        session.commit()
    sink.messages.clear()
    task = client.post(
        f"/api/orgs/{org_id}/tasks",
        json={"title": "Fix <login>", "assignee_id": bob.id, "watcher_ids": [carol.id]},
        headers=alice.headers,
    ).json()
    return task, alice, bob, carol, dave


@on_each_broker
def test_status_change_emails_each_recipient_once(client, team, worker, sink):
    task, alice, bob, carol, _dave = team
    response = client.patch(f"/api/tasks/{task['id']}", json={"status": "in_progress"}, headers=bob.headers)
    assert response.status_code == 200

    wait_until(lambda: all_status(EmailStatus.sent, 2), message="both emails sent")
    time.sleep(0.3)
    assert sorted(m.rcpt_tos[0] for m in sink.messages) == [alice.email, carol.email]
    by_recipient = {r.to_email: r for r in rows()}
    for mail in sink.messages:
        message = mail.message
        row = by_recipient[mail.rcpt_tos[0]]
        assert message["To"].addresses[0].addr_spec == row.to_email
        assert message["From"].addresses[0].addr_spec == "noreply@herald.local"
        assert message["Subject"] == "[Acme] Fix <login>: todo → in_progress"
        assert message["Message-ID"] == row.message_id
        assert message.get_content_type() == "multipart/alternative"
        text = message.get_body(("plain",)).get_content()
        html = message.get_body(("html",)).get_content()
        assert 'Bob moved "Fix <login>" from todo to in_progress' in text
        assert "Fix &lt;login&gt;" in html and "<login>" not in html
        assert f'href="http://localhost:8000/tasks/{task["id"]}"' in html
        assert row.attempts == 1 and attempts_of(row.id) == [("sent", 250)]


def test_a_status_email_links_to_the_web_app_and_the_link_tells_nothing(client, team, worker, sink):
    """The link opens in a browser, signed in or not: the web app's page, which asks for a sign-in and
    then loads the task through the API; the same page for any number."""
    task, _alice, bob, _carol, _dave = team
    client.patch(f"/api/tasks/{task['id']}", json={"status": "done"}, headers=bob.headers)
    wait_until(lambda: len(sink.messages) == 2, message="both emails sent")
    text = sink.messages[0].message.get_body(("plain",)).get_content()
    link = f"http://localhost:8000/tasks/{task['id']}"
    assert f"Open the task: {link}\r\n" in text

    page = client.get(link)  # no Authorization header: the web app's page, which opens the task
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<div id="app">' in page.text and page.headers["content-security-policy"].startswith("default-src")
    assert client.get("/tasks/999999").text == page.text  # not even whether a task exists


@pytest.mark.parametrize("task_id", ["0", "-1", "2147483648", "abc", "1.5", "%00"])
def test_the_task_page_refuses_what_is_not_a_task_number(client, task_id):
    response = client.get(f"/tasks/{task_id}")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "task_id"]


@on_each_broker
def test_broker_outage_delays_but_loses_nothing(client, team, worker, sink, broker_server):
    task, alice, bob, carol, _dave = team
    broker_server.stop()
    try:
        started = time.monotonic()
        response = client.patch(f"/api/tasks/{task['id']}", json={"status": "done"}, headers=bob.headers)
        assert response.status_code == 200
        assert time.monotonic() - started < 10
        assert [r.status for r in rows()] == [EmailStatus.pending, EmailStatus.pending]
    finally:
        broker_server.start()
    kick_processor()
    wait_until(
        lambda: all_status(EmailStatus.sent, 2), timeout=60, message="emails sent after the broker returned"
    )
    time.sleep(0.5)
    assert sorted(m.rcpt_tos[0] for m in sink.messages) == [alice.email, carol.email]


def test_wakeups_and_two_processors_race_on_200_emails(worker, sink):
    worker.stop()
    ids = queue(200)  # 200 send_email_async wake-ups now wait in Redis
    process_email_queue.delay()
    process_email_queue.delay()
    worker.start()  # every wake-up and both processors start together
    wait_until(lambda: all_status(EmailStatus.sent, 200), timeout=60, message="200 emails sent")
    time.sleep(0.5)
    counts = Counter(m.message["Message-ID"] for m in sink.messages)
    assert len(counts) == 200 and max(counts.values()) == 1
    assert all(r.attempts == 1 for r in rows()) and len(ids) == 200


def test_a_burst_of_commits_shares_few_wake_ups_that_announce_each_email_once(worker, redis_url, monkeypatch):
    """One email per transaction, committed back to back as busy requests do: the wake-ups are spaced
    WAKE_SPACING_SECONDS apart, so many commits share one message, and no email is left out."""
    import base64
    import json

    import redis

    from src import outages
    from src.emails.service import WAKE_SPACING_SECONDS
    from src.emails.tasks.email_tasks import send_email_async
    from src.relay import relay

    published = []  # what the relay asked Celery to publish, so a failure says where emails went
    publish = send_email_async.delay
    monkeypatch.setattr(send_email_async, "delay", lambda *args: published.append(args) or publish(*args))
    worker.stop()
    broker = redis.Redis.from_url(redis_url)
    broker.delete("emails")
    started = time.monotonic()
    ids = [queue(1)[0] for _ in range(40)]
    committing = time.monotonic() - started
    assert relay.flush(5)
    messages = [json.loads(raw) for raw in broker.lrange("emails", 0, -1)]
    announced = []
    for message in messages:
        assert message["headers"]["task"] == "src.emails.tasks.email_tasks.send_email_async"
        (email_id, also), _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        announced += [email_id, *also]
    # Wake-ups are skipped while the broker's breaker is open (the processor sends those emails),
    # and a consumer left running elsewhere would take them from the list: said here, so a failure
    # tells those apart.
    consumers = sum(1 for c in broker.client_list() if c.get("cmd") in ("brpop", "blpop", "bzpopmin"))
    assert sorted(announced) == sorted(ids), (
        f"every email announced once; published {published}, breaker "
        f"{'open' if outages.celery_broker.down else 'closed'}, {consumers} consumer(s) blocked on Redis"
    )
    most = committing / WAKE_SPACING_SECONDS + 2  # one at once, one per interval, one flushed
    assert len(messages) <= most, f"{len(messages)} wake-ups for 40 commits in {committing:.3f} s"


@on_each_broker
def test_sigkill_mid_batch_loses_nothing_and_duplicates_at_most_one_per_process(worker, sink):
    worker.stop()
    queue(500, publish=False)
    worker.start()
    kick_processor()
    wait_until(lambda: len(sink.messages) >= 60, message="the batch to be under way")
    worker.kill()
    delivered_before_kill = len(sink.messages)
    assert delivered_before_kill < 500, "the batch finished before the kill; nothing was tested"

    time.sleep(WORKER_LEASE_SECONDS + 0.5)  # the killed claims expire
    worker.start()
    # As beat would: each run has a budget of EMAIL_QUEUE_INTERVAL (1 s here), and the expired claims
    # of the killed processes become due after the first runs have started.
    wait_until(
        lambda: kick_processor() or all_status(EmailStatus.sent, 500),
        timeout=90,
        interval=1.0,
        message="all 500 sent after restart",
    )
    time.sleep(0.5)
    counts = Counter(m.message["Message-ID"] for m in sink.messages)
    duplicates = sum(n - 1 for n in counts.values())
    print(f"killed after {delivered_before_kill}/500 delivered; {duplicates} duplicate(s) after restart")
    assert len(counts) == 500
    assert duplicates <= worker.concurrency, (
        f"{duplicates} duplicates for {worker.concurrency} killed processes"
    )


def test_a_backlog_starts_a_helper_drainer_with_the_first_batch(worker, sink, monkeypatch):
    """EMAIL_PROCESSOR_CONCURRENCY is 2: the processor's first claim comes back full, so before
    sending it starts a helper in the worker's other process, which sends the next batch meanwhile."""
    # A server taking 5 ms a message: a batch lasts longer than a helper takes to start on a busy machine.
    monkeypatch.setattr(sink.handler, "data_delay", 0.005)
    queue(250, publish=False)  # no wake-up: the processor finds them
    kick_processor()

    # Kicked again as beat would, once the first runs are over: on a loaded machine their 1-second
    # budget may end before 250 (kicked sooner, a second run would send early without any helper).
    def first_runs_over() -> bool:
        received = sink.messages
        return len(received) == 250 or bool(received and time.time() - received[-1].received_at > 2)

    wait_until(first_runs_over, timeout=60, message="the first runs over")
    wait_until(lambda: all_status(EmailStatus.sent, 250) or kick_processor(), timeout=60, interval=0.5,
               message="the backlog sent")  # fmt: skip
    peers = [mail.peer for mail in sink.messages]
    assert len(peers) == 250 and len(set(peers)) == 2, "two drainers, each over its own connection"
    helper_starts = next(index for index, peer in enumerate(peers) if peer != peers[0])
    assert helper_starts < 100, f"the helper's first email came after the first batch ({helper_starts})"


def test_the_server_takes_a_message_only_once_the_one_before_is_recorded(db, delivery_to_sink, monkeypatch):
    """Each outcome is written while the server reads the next message's envelope, before that
    message is sent: a crash can leave only the message in flight sent and unrecorded."""
    sink = delivery_to_sink
    kept_connections.close_all()  # a connection opened before the hook below would not call it
    recorded_when_accepting = []
    accept = sink.handler.handle_DATA

    async def count_then_accept(server, session, envelope):
        with SessionLocal() as db_session:
            recorded_when_accepting.append(db_session.scalar(select(func.count()).select_from(EmailAttempt)))
        return await accept(server, session, envelope)

    monkeypatch.setattr(sink.handler, "handle_DATA", count_then_accept)
    ids = queue(20, publish=False)
    assert deliver(ids, fill=False).sent == 20
    kept_connections.close_all()
    assert recorded_when_accepting == list(range(20))
    assert [attempts_of(email_id) for email_id in ids] == [[("sent", 250)]] * 20


def test_an_error_after_the_server_took_a_message_still_records_it(db, delivery_to_sink, monkeypatch):
    """The outcome waits for the next message's envelope; sending that ends in an error instead still
    writes it, or the message would be sent again once its claim expired."""
    from src.emails import delivery

    def crash(email, error):
        raise RuntimeError("after the first message")

    monkeypatch.setattr(delivery, "_log_outcome", crash)
    first, second = queue(2, publish=False)
    with pytest.raises(RuntimeError):
        deliver([first, second], fill=False)
    assert len(delivery_to_sink.messages) == 1
    assert attempts_of(first) == [("sent", 250)] and attempts_of(second) == []
    statuses = {row.id: row.status for row in rows()}
    assert statuses == {first: EmailStatus.sent, second: EmailStatus.sending}


def test_a_lease_lost_while_connecting_leaves_the_email_to_its_new_claim(db, delivery_to_sink, monkeypatch):
    """Connecting can take several timeouts: the lease is checked again right before the server may
    take the message, so an email another worker claimed meanwhile is sent once, by that worker."""
    from src.emails import claims

    kept_connections.close_all()
    [email_id] = queue(1, publish=False)
    taken_over = []
    take = kept_connections.take

    def take_while_the_lease_runs_out(*args):
        connection = take(*args)
        with SessionLocal() as session:  # the lease expires and another worker claims the email
            session.execute(update(EmailQueue).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
            session.commit()
            taken_over.append(claims.claim(session, 10))
        return connection

    monkeypatch.setattr(kept_connections, "take", take_while_the_lease_runs_out)
    monkeypatch.setattr(claims.Claim, "renewal_due", property(lambda claim: bool(taken_over)))
    assert deliver([email_id], fill=False).sent == 0
    assert delivery_to_sink.messages == [] and attempts_of(email_id) == []
    [row] = rows()
    assert [e.id for e in taken_over[0].emails] == [email_id]
    assert row.status == EmailStatus.sending and row.claim_token == taken_over[0].token


def test_lines_starting_with_a_dot_arrive_intact(db, delivery_to_sink):
    body = "Agenda:\n.\n.hidden\n..two dots\nend"
    with SessionLocal() as session:
        email = EmailService.queue_email(
            session, to_email="dots@example.com", subject="Dots", body_text=body, wake_worker=False
        )
        session.commit()
    email_id = email.id
    assert deliver([email_id], fill=False).sent == 1
    [mail] = delivery_to_sink.messages
    assert mail.message.get_body(("plain",)).get_content().replace("\r\n", "\n").rstrip("\n") == body


def test_transient_421_is_retried_then_sent(worker, sink):
    sink.replies.append("421 4.3.2 Service not available, try later")
    [email_id] = queue(1)
    wait_until(lambda: attempts_of(email_id), message="the first attempt")
    assert rows()[0].status in (EmailStatus.pending, EmailStatus.sending, EmailStatus.sent)
    wait_until(
        lambda: kick_processor() or rows()[0].status == EmailStatus.sent, interval=0.5, message="retry"
    )
    assert attempts_of(email_id) == [("transient", 421), ("sent", 250)]
    assert rows()[0].attempts == 2 and len(sink.messages) == 1


def test_permanent_550_fails_at_once_with_reason(worker, sink):
    sink.replies.append("550 5.1.1 No such user here")
    [email_id] = queue(1)
    wait_until(lambda: rows()[0].status == EmailStatus.failed, message="failed")
    kick_processor()
    time.sleep(1.5)
    row = rows()[0]
    assert row.status == EmailStatus.failed and row.attempts == 1
    assert "550" in row.last_error and "No such user" in row.last_error
    assert attempts_of(email_id) == [("permanent", 550)]
    assert sink.messages == []


def test_a_retried_email_keeps_the_attempts_of_before_its_retry(worker, sink):
    """Retrying starts the count again at 1; the new attempt 1 is recorded beside the old one."""
    sink.replies.append("550 5.7.1 Message refused")
    [email_id] = queue(1)
    wait_until(lambda: rows()[0].status == EmailStatus.failed, message="failed")
    with SessionLocal() as session:
        assert EmailService.retry(session, [email_id]) == [email_id]
    wait_until(lambda: rows()[0].status == EmailStatus.sent, message="sent after the retry")
    assert attempts_of(email_id) == [("permanent", 550), ("sent", 250)]
    with SessionLocal() as session:
        numbers = session.scalars(select(EmailAttempt.attempt).where(EmailAttempt.email_id == email_id))
        assert sorted(numbers) == [1, 1]
    assert len(sink.messages) == 1


def test_attempts_run_out_then_failed(worker, sink):
    sink.replies.extend(["451 4.7.1 greylisted"] * 3)
    [email_id] = queue(1, max_attempts=3)
    wait_until(
        lambda: kick_processor() or rows()[0].status == EmailStatus.failed, interval=0.5, message="failed"
    )
    assert [a[1] for a in attempts_of(email_id)] == [451, 451, 451]
    assert "451" in rows()[0].last_error and sink.messages == []
