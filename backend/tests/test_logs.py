"""Request ids from the API to the SMTP reply, and LOG_FORMAT=json from real API and worker processes."""

import json
import re

import httpx
from sqlalchemy import select

from src.db import SessionLocal
from src.devserver.processes import ApiServer, CeleryWorker
from src.devserver.redis_server import free_port
from src.emails.models import EmailQueue, EmailStatus
from tests.conftest import RUN_DIR
from tests.test_emails import wait_until

NEW_ID = re.compile(r"[0-9a-f]{32}")


def test_a_request_keeps_a_sane_id_it_brings_and_gets_one_otherwise(client):
    assert (
        client.get("/healthz", headers={"X-Request-ID": "edge-7f3a.1"}).headers["X-Request-ID"]
        == "edge-7f3a.1"
    )
    for unsafe in ("has space", "x" * 65, 'quote"d', ""):
        given = client.get("/healthz", headers={"X-Request-ID": unsafe}).headers["X-Request-ID"]
        assert NEW_ID.fullmatch(given), (unsafe, given)
    first, second = (client.get("/api/orgs").headers["X-Request-ID"] for _ in range(2))  # 401s too
    assert NEW_ID.fullmatch(first) and NEW_ID.fullmatch(second) and first != second


def test_the_emails_of_a_status_change_remember_its_request(client, make_user, make_org):
    alice, bob = make_user("alice"), make_user("bob")
    org_id = make_org(alice, bob)
    task = client.post(
        f"/api/orgs/{org_id}/tasks",
        json={"title": "Trace me", "watcher_ids": [bob.id]},
        headers=alice.headers,
    ).json()
    headers = {**alice.headers, "X-Request-ID": "change-0042"}
    assert (
        client.patch(f"/api/tasks/{task['id']}", json={"status": "done"}, headers=headers).status_code == 200
    )
    with SessionLocal() as session:
        rows = session.scalars(select(EmailQueue).where(EmailQueue.dedupe_key.like("task-event:%"))).all()
    assert [(row.to_email, row.request_id) for row in rows] == [(bob.email, "change-0042")]


def json_lines(path):
    """Every record the process logged, parsed; lines that are not JSON are returned apart. Celery
    itself prints a line at shutdown and, run as root (CI), warns in text before logging is set up."""
    records, other = [], []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
        elif line.strip():
            other.append(line)
    return records, other


CELERY_CONSOLE = ("worker: Warm shutdown", "worker: Cold shutdown")
ROOT_WARNING = re.compile(r"SecurityWarning|superuser privileges|absolutely not recommended|--uid option|"
                          r"User information: uid=0|_warn_or_raise_security_error")  # fmt: skip


def test_json_logs_follow_a_status_change_from_its_request_to_the_smtp_reply_and_hold_no_secret(
    db, client, make_user, make_org, celery_worker, sink
):
    celery_worker.stop()  # this test's worker must be the one that delivers (the next test restarts it)
    alice, bob = make_user("alice"), make_user("bob")
    org_id = make_org(alice, bob)
    sink.messages.clear()
    env = {"DATABASE_URL": db, "LOG_FORMAT": "json", "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(sink.port),
           "SMTP_USE_TLS": "false"}  # fmt: skip
    api_log, worker_log = RUN_DIR / "api-json.log", RUN_DIR / "worker-json.log"
    for log in (api_log, worker_log):
        log.unlink(missing_ok=True)
    api = ApiServer(env, api_log, free_port()).start()
    worker = CeleryWorker(env, worker_log, concurrency=1).start()
    try:
        with httpx.Client(base_url=api.url, timeout=10) as http:
            login = http.post(
                "/api/auth/login", json={"email": alice.email, "password": "correct horse battery"}
            )
            token = login.json()["access_token"]
            auth = {"Authorization": f"Bearer {token}"}
            task = http.post(
                f"/api/orgs/{org_id}/tasks",
                json={"title": "Follow me", "watcher_ids": [bob.id]},
                headers=auth,
            ).json()
            changed = http.patch(
                f"/api/tasks/{task['id']}",
                json={"status": "done"},
                headers={**auth, "X-Request-ID": "follow-0001"},
            )
            assert changed.status_code == 200 and changed.headers["X-Request-ID"] == "follow-0001"
            stream_token = http.post("/api/notifications/stream-token", headers=auth).json()["token"]
            with http.stream("GET", "/api/notifications/stream", params={"token": stream_token}) as stream:
                next(stream.iter_lines())  # it opened: uvicorn logs its URL, token and all
        wait_until(
            lambda: any(m.rcpt_tos == [bob.email] for m in sink.messages), message="Bob's email at the sink"
        )
        with SessionLocal() as session:
            email = session.scalars(select(EmailQueue).where(EmailQueue.request_id == "follow-0001")).one()
        wait_until(lambda: email.id in {r.get("email_id") for r in json_lines(worker_log)[0]}, timeout=5,
                   message="the worker's line for the email")  # fmt: skip
    finally:
        api.stop()
        worker.stop()

    api_records, api_other = json_lines(api_log)
    worker_records, worker_other = json_lines(worker_log)
    assert api_other == [], api_other
    assert all(line.startswith(CELERY_CONSOLE) or ROOT_WARNING.search(line) for line in worker_other), (
        worker_other
    )
    for record in api_records + worker_records:
        assert {"timestamp", "level", "logger", "message", "request_id"} <= record.keys()

    # The request, in the API's access log, with the caller...
    [access] = [r for r in api_records if "PATCH /api/tasks/" in r["message"]]
    assert access["request_id"] == "follow-0001" and access["user_id"] == alice.id
    # ... and the SMTP reply, in the worker's, with the email and the same request id.
    [sent] = [r for r in worker_records if r.get("email_id") == email.id]
    assert sent["request_id"] == "follow-0001" and sent["message"] == f"email {email.id} sent (attempt 1)"
    assert sent["task_name"].startswith("src.emails.tasks.")
    with SessionLocal() as session:
        assert session.get(EmailQueue, email.id).status == EmailStatus.sent

    from src.config import settings

    everything = api_log.read_text() + worker_log.read_text()
    body = (
        next(m for m in sink.messages if m.rcpt_tos == [bob.email]).message.get_body(("plain",)).get_content()
    )
    secrets = {
        "the password": "correct horse battery",
        "the access token": token,
        "the stream token": stream_token,
        "the signing key": settings.secret_key,
        "the email's body": body.strip().splitlines()[0],
    }
    assert not [name for name, secret in secrets.items() if secret in everything]
