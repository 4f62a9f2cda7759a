"""Many simultaneous status changes on one real API process: every one answers, fast, and every email
and notification it causes is delivered once."""

import asyncio
import time

import httpx
import pytest
from sqlalchemy import func, select

from src.db import SessionLocal
from src.emails.models import EmailQueue, EmailStatus
from src.notifications.models import Notification
from tests.live import SseClient

STATUSES = ["in_progress", "in_review", "done"]


def create_tasks(client, org_id, owner, assignee, watchers, count):
    tasks = []
    for number in range(count):
        body = {
            "title": f"Task {number}",
            "assignee_id": assignee.id,
            "watcher_ids": [w.id for w in watchers],
        }
        response = client.post(f"/api/orgs/{org_id}/tasks", json=body, headers=owner.headers)
        assert response.status_code == 201, response.text
        tasks.append(response.json()["id"])
    return tasks


async def change_all(url, task_ids, caller, status):
    """One PATCH per task, all at once; returns (status code, seconds) per request."""

    async def change(api, task_id):
        started = time.monotonic()
        try:
            response = await api.patch(
                f"/api/tasks/{task_id}", json={"status": status}, headers=caller.headers
            )
            code = response.status_code
        except httpx.HTTPError as exc:
            code = type(exc).__name__
        return code, time.monotonic() - started

    limits = httpx.Limits(max_connections=len(task_ids), max_keepalive_connections=len(task_ids))
    async with httpx.AsyncClient(base_url=url, timeout=35, limits=limits) as api:
        return await asyncio.gather(*(change(api, task_id) for task_id in task_ids))


def wait_until(condition, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def count(query):
    with SessionLocal() as session:
        return session.scalar(select(func.count()).select_from(query.subquery()))


@pytest.mark.parametrize("changes", [60, 200])
def test_concurrent_status_changes_all_answer_and_deliver_once(
    client, make_user, make_org, api_servers, worker, sink, changes
):
    """How fast is `make bench-api`'s question; this one is whether every request is served and
    none waits out a pool or lock timeout (30 s), as a burst of 30 used to."""
    owner, assignee, *watchers = (make_user(name) for name in ("olga", "ann", "wes", "wyn"))
    org_id = make_org(owner, assignee, *watchers)
    task_ids = create_tasks(client, org_id, owner, assignee, watchers, changes)
    server = api_servers[0]
    token = httpx.post(f"{server.url}/api/notifications/stream-token", headers=assignee.headers).json()
    stream = SseClient(f"{server.url}/api/notifications/stream?token={token['token']}")
    status_emails = select(EmailQueue).where(EmailQueue.dedupe_key.startswith("task-event:"))
    assert wait_until(lambda: count(select(EmailQueue).where(EmailQueue.status == EmailStatus.sent)) == 3, 10)
    sink.messages.clear()  # of the three invitations' emails

    results = asyncio.run(change_all(server.url, task_ids, owner, "in_progress"))

    codes = [code for code, _seconds in results]
    assert codes == [200] * changes, {code: codes.count(code) for code in set(codes)}
    slowest = max(seconds for _code, seconds in results)
    assert slowest < changes * 0.1, f"slowest of {changes} answered in {slowest:.2f}s"

    expected = changes * 3  # assignee and two watchers; never the owner who made the change
    with SessionLocal() as session:
        ours = set(session.scalars(status_emails.with_only_columns(EmailQueue.message_id)))
    assert len(ours) == expected

    def received() -> list[str]:
        # Only this test's: the sink and the worker serve every test of this pytest process, and a
        # worker an earlier test left waiting (on a stopped server, say) may still deliver its claim.
        return [m.message["Message-ID"] for m in sink.messages if m.message["Message-ID"] in ours]

    assert wait_until(lambda: len(received()) >= expected, 60), f"{len(received())} of {expected}"
    time.sleep(1)  # a second delivery of any would arrive now
    assert sorted(received()) == sorted(ours)  # each exactly once
    assert count(status_emails.where(EmailQueue.status == EmailStatus.sent)) == expected

    published = select(Notification).where(
        Notification.type == "task.status_changed", Notification.seq.is_not(None)
    )
    assert wait_until(lambda: count(published) == expected, 10)
    streamed = []
    while len(streamed) < changes:
        streamed.append(stream.next(timeout=10)["data"])
    stream.close()
    assert sorted(n["data"]["task_id"] for n in streamed) == sorted(task_ids)
    assert len({n["seq"] for n in streamed}) == changes
