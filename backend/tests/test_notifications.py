"""Live notifications across two real API processes, a real Redis and a real worker."""

import time
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import delete

from src import outages
from src.auth.models import User
from src.auth.security import create_token, password_fingerprint
from src.db import SessionLocal
from src.notifications.service import last_seq, publish_tick
from src.orgs.models import Membership, Role
from tests.live import SseClient, WsClient


@pytest.fixture
def team(client, make_user, make_org):
    alice, bob, carol = make_user("alice"), make_user("bob"), make_user("carol")
    org_id = make_org(alice, bob, carol)
    task = client.post(
        f"/api/orgs/{org_id}/tasks", json={"title": "Ship it", "watcher_ids": [bob.id]}, headers=alice.headers
    ).json()
    return org_id, task, alice, bob, carol


@pytest.fixture
def servers(api_servers, db):
    a, b = api_servers
    with httpx.Client(base_url=a.url, timeout=10) as api_a:
        yield api_a, b


def stream_url(server, caller, **params):
    token = httpx.post(f"{server.url}/api/notifications/stream-token", headers=caller.headers).json()["token"]
    query = "&".join(f"{k}={v}" for k, v in {"token": token, **params}.items())
    return f"{server.url}/api/notifications/stream?{query}"


def move(api, task, caller, status):
    response = api.patch(f"/api/tasks/{task['id']}", json={"status": status}, headers=caller.headers)
    assert response.status_code == 200, response.text
    return time.monotonic()


def published_inbox(api, caller, count, timeout=5.0):
    """The inbox once it lists `count` notifications: they are listed once published, which the
    relay does just after the change commits."""
    deadline = time.monotonic() + timeout
    while True:
        items = api.get("/api/notifications", headers=caller.headers).json()["items"]
        if len(items) >= count or time.monotonic() > deadline:
            return items
        time.sleep(0.05)


def unread_via_api(api, caller):
    return api.get("/api/notifications/unread-count", headers=caller.headers).json()["count"]


def test_change_on_a_reaches_sse_client_on_b_within_a_second(servers, team):
    api_a, b = servers
    _org, task, alice, bob, _carol = team
    stream = SseClient(stream_url(b, bob))
    assert stream.next("unread_count")["data"] == {"count": 0}
    changed_at = move(api_a, task, alice, "in_progress")
    event = stream.next(timeout=1.0)
    assert time.monotonic() - changed_at < 1.0
    assert event["data"]["type"] == "task.status_changed"
    assert event["data"]["data"]["new_status"] == "in_progress"
    assert event["id"] == event["data"]["seq"]
    assert stream.next("unread_count")["data"] == {"count": 1} and unread_via_api(api_a, bob) == 1
    stream.close()


def test_change_on_a_reaches_websocket_client_on_b_within_a_second(servers, team):
    api_a, b = servers
    _org, task, alice, bob, _carol = team
    token = api_a.post("/api/notifications/stream-token", headers=bob.headers).json()["token"]
    socket = WsClient(f"ws://127.0.0.1:{b.port}/api/ws/notifications?token={token}")
    assert socket.next("unread_count")["data"] == {"count": 0}
    changed_at = move(api_a, task, alice, "in_review")
    event = socket.next(timeout=1.0)
    assert time.monotonic() - changed_at < 1.0
    assert event["data"]["data"]["new_status"] == "in_review"
    socket.close()


def test_reconnect_with_last_event_id_gets_exactly_what_was_missed(servers, team):
    api_a, b = servers
    _org, task, alice, bob, _carol = team
    stream = SseClient(stream_url(b, bob))
    move(api_a, task, alice, "in_progress")
    last_seen = stream.next()["id"]
    stream.close()

    for status in ("in_review", "done", "cancelled"):
        move(api_a, task, alice, status)
    token = api_a.post("/api/notifications/stream-token", headers=bob.headers).json()["token"]
    resumed = SseClient(
        f"{b.url}/api/notifications/stream?token={token}", headers={"Last-Event-ID": str(last_seen)}
    )
    missed = [resumed.next() for _ in range(3)]
    assert [e["data"]["data"]["new_status"] for e in missed] == ["in_review", "done", "cancelled"]
    assert [e["id"] for e in missed] == sorted(e["id"] for e in missed) and missed[0]["id"] > last_seen

    move(api_a, task, alice, "todo")
    live = resumed.next()
    assert live["data"]["data"]["new_status"] == "todo"
    assert not [e for e in resumed.drain() if e["event"] == "notification"], "nothing twice"
    resumed.close()


def test_a_last_event_id_never_given_out_starts_the_stream_afresh(servers, team):
    """After a database restore a client's Last-Event-ID can be past every seq: resuming from it
    would skip every notification up to it, for good."""
    api_a, b = servers
    _org, task, alice, bob, _carol = team
    with SessionLocal() as session:
        beyond = last_seq(session) + 1000
    resumed = SseClient(stream_url(b, bob), headers={"Last-Event-ID": str(beyond)})
    assert "never given out" in resumed.next("reset")["data"]["reason"]
    assert resumed.next("unread_count")["id"] < beyond
    move(api_a, task, alice, "in_progress")
    assert resumed.next()["data"]["data"]["new_status"] == "in_progress"
    resumed.close()


def test_broadcast_reaches_members_only(servers, team, make_user, make_org):
    api_a, b = servers
    org_id, _task, alice, bob, carol = team
    mallory = make_user("mallory")
    make_org(mallory, name="Elsewhere")
    streams = {who.email: SseClient(stream_url(b, who)) for who in (bob, carol, mallory)}

    made = api_a.post(
        f"/api/orgs/{org_id}/announcements",
        json={"title": "Release at 5", "body": "Freeze now"},
        headers=alice.headers,
    )
    assert made.status_code == 201
    notification_id = made.json()["id"]
    for who in (bob, carol):
        assert streams[who.email].next()["data"]["title"] == "Release at 5"
    assert not [e for e in streams[mallory.email].drain(0.5) if e["event"] == "notification"]

    assert api_a.get("/api/notifications", headers=mallory.headers).json()["items"] == []
    assert (
        api_a.post(f"/api/notifications/{notification_id}/read", headers=mallory.headers).status_code == 404
    )
    assert api_a.post(f"/api/notifications/{notification_id}/read", headers=bob.headers).status_code == 200
    by_member = api_a.post(f"/api/orgs/{org_id}/announcements", json={"title": "x"}, headers=bob.headers)
    assert by_member.status_code == 403
    outsider = api_a.post(f"/api/orgs/{org_id}/announcements", json={"title": "x"}, headers=mallory.headers)
    assert outsider.status_code == 404
    for stream in streams.values():
        stream.close()


def test_redis_restart_loses_nothing_and_repeats_nothing(servers, team, redis_server):
    api_a, b = servers
    _org, task, alice, bob, _carol = team
    stream = SseClient(stream_url(b, bob))
    move(api_a, task, alice, "in_progress")
    assert stream.next()["data"]["data"]["new_status"] == "in_progress"
    listed = len(published_inbox(api_a, bob, 0))

    redis_server.stop()
    try:
        move(api_a, task, alice, "in_review")
        move(api_a, task, alice, "done")
    finally:
        redis_server.start()
    move(api_a, task, alice, "cancelled")
    # A's breaker may skip publishing all three, and B's hub may resubscribe (and catch up) before A
    # numbers them: then the beat's tick, every 5 s, tells B of the gap. Here this test is the beat.
    assert len(published_inbox(api_a, bob, listed + 3)) == listed + 3
    deadline = time.monotonic() + 5
    while outages.broker.down and time.monotonic() < deadline:  # this process's breaker, tripped too
        time.sleep(0.1)
    publish_tick()
    received = [stream.next(timeout=15)["data"]["data"]["new_status"] for _ in range(3)]
    assert received == ["in_review", "done", "cancelled"]
    assert not [e for e in stream.drain(1.0) if e["event"] == "notification"]
    stream.close()


def test_a_member_added_while_streaming_gets_the_new_orgs_broadcasts(servers, team, make_org):
    api_a, b = servers
    _org, _task, alice, bob, _carol = team
    stream = SseClient(stream_url(b, bob))
    stream.next("unread_count")
    other_org = make_org(alice, name="Second")
    invited = api_a.post(f"/api/orgs/{other_org}/members", json={"email": bob.email}, headers=alice.headers)
    assert invited.status_code == 202
    invitation = stream.next("notification")["data"]
    assert invitation["type"] == "invitation.received" and invitation["org_id"] == other_org
    accepted = api_a.post(f"/api/invitations/{invited.json()['id']}/accept", headers=bob.headers)
    assert accepted.status_code == 200
    assert stream.ended.wait(5), "the stream did not end to pick up the new membership"
    resumed = SseClient(stream_url(b, bob))
    api_a.post(f"/api/orgs/{other_org}/announcements", json={"title": "Welcome"}, headers=alice.headers)
    assert resumed.next()["data"]["title"] == "Welcome"
    resumed.close()


def test_a_stream_opened_during_the_drain_ends_at_once():
    from src.notifications.live import LiveHub

    hub = LiveHub()
    hub.drain()
    assert hub.subscribe(1, {1}).closing


def test_unread_count_on_the_stream_matches_the_api(servers, team):
    api_a, b = servers
    _org, task, alice, bob, _carol = team
    stream = SseClient(stream_url(b, bob))
    assert stream.next("unread_count")["data"]["count"] == 0
    move(api_a, task, alice, "in_progress")
    move(api_a, task, alice, "done")
    first = stream.next()
    stream.next()
    counts = [e["data"]["count"] for e in stream.drain(0.5) if e["event"] == "unread_count"]
    assert counts[-1] == unread_via_api(api_a, bob) == 2

    api_a.post(f"/api/notifications/{first['data']['id']}/read", headers=bob.headers)
    assert stream.next("unread_count")["data"]["count"] == unread_via_api(api_a, bob) == 1
    api_a.post("/api/notifications/read-all", headers=bob.headers)
    assert stream.next("unread_count")["data"]["count"] == unread_via_api(api_a, bob) == 0
    move(api_a, task, alice, "todo")
    stream.next()
    assert stream.next("unread_count")["data"]["count"] == unread_via_api(api_a, bob) == 1
    stream.close()


def test_a_stream_starts_from_the_unread_count_of_every_org_the_user_is_in(servers, team, make_org):
    api_a, b = servers
    org_id, task, alice, bob, _carol = team
    second_org, not_bobs_org = make_org(alice, bob), make_org(alice)
    for org in (org_id, second_org, not_bobs_org):
        response = api_a.post(f"/api/orgs/{org}/announcements", json={"title": "News"}, headers=alice.headers)
        assert response.status_code == 201, response.text
    move(api_a, task, alice, "in_progress")  # Bob watches the task
    # His two invitations (accepted, so read), the announcements of his two organizations and the
    # change; not the third organization's announcement.
    assert len(published_inbox(api_a, bob, 5, timeout=10)) == 5
    assert unread_via_api(api_a, bob) == 3
    stream = SseClient(stream_url(b, bob))
    assert stream.next("unread_count", timeout=10)["data"]["count"] == 3
    stream.close()


def test_streams_refuse_missing_bad_and_expired_tokens(servers, team):
    _api_a, b = servers
    _org, _task, _alice, bob, _carol = team
    expired = create_token(bob.id, "stream", timedelta(seconds=-1))
    for url, headers in (
        (f"{b.url}/api/notifications/stream", {}),
        (f"{b.url}/api/notifications/stream?token=garbage", {}),
        (f"{b.url}/api/notifications/stream?token={expired}", {}),
        (f"{b.url}/api/notifications/stream?token={bob.token}", {}),  # an access token is not for URLs
        (f"{b.url}/api/notifications/stream", {"Authorization": f"Bearer {expired}"}),
    ):
        response = httpx.get(url, headers=headers, timeout=5)
        assert response.status_code == 401, url
        assert "token" in response.json()["detail"]
    with pytest.raises(Exception, match="401"):
        WsClient(f"ws://127.0.0.1:{b.port}/api/ws/notifications?token={expired}")
    with pytest.raises(Exception, match="401"):
        WsClient(f"ws://127.0.0.1:{b.port}/api/ws/notifications")
    # Signed here and unexpired, for a user who does not exist (any more).
    nobody = create_token(10**9, "stream", timedelta(minutes=5))
    response = httpx.get(f"{b.url}/api/notifications/stream?token={nobody}", timeout=5)
    assert response.status_code == 401 and response.json()["detail"] == "invalid or expired token"
    with pytest.raises(Exception, match="401"):
        WsClient(f"ws://127.0.0.1:{b.port}/api/ws/notifications?token={nobody}")


def test_a_user_in_no_organization_opens_a_stream(servers, make_user):
    _api_a, b = servers
    loner = make_user("loner")
    stream = SseClient(stream_url(b, loner))
    assert stream.next("unread_count", timeout=10)["data"] == {"count": 0}
    stream.close()


def test_celery_tasks_send_and_broadcast(servers, team, worker):
    from src.notifications.tasks.notification_tasks import broadcast_notification, send_notification

    _api_a, b = servers
    org_id, _task, _alice, bob, _carol = team
    stream = SseClient(stream_url(b, bob))
    send_notification.delay(bob.id, "reminder", {"title": "Standup in 5", "org_id": org_id})
    assert stream.next(timeout=10)["data"]["title"] == "Standup in 5"
    broadcast_notification.delay(org_id, "announcement", {"title": "Pizza", "body": "in the kitchen"})
    event = stream.next(timeout=10)["data"]
    assert event["title"] == "Pizza" and event["broadcast"] is True
    stream.close()


def test_shutdown_drains_open_streams(database_url, db, team):
    from src.devserver.processes import ApiServer
    from src.devserver.redis_server import free_port
    from tests.conftest import RUN_DIR

    _org, _task, _alice, bob, _carol = team
    server = ApiServer({"DATABASE_URL": database_url}, RUN_DIR / "api-drain.log", free_port()).start()
    try:
        streams = [SseClient(stream_url(server, bob)) for _ in range(3)]
        for stream in streams:
            stream.next("unread_count")
        started = time.monotonic()
        server.stop(timeout=10)  # SIGTERM
        assert time.monotonic() - started < 5, "the server waited for its streams instead of draining them"
        assert all(stream.ended.wait(2) for stream in streams)
    finally:
        server.kill()


def test_stream_tokens_stay_out_of_the_logs(servers, team):
    _api_a, b = servers
    _org, _task, _alice, bob, _carol = team
    url = stream_url(b, bob)
    token = url.split("token=")[1]
    SseClient(url).close()
    ws_token = httpx.post(f"{b.url}/api/notifications/stream-token", headers=bob.headers).json()["token"]
    WsClient(f"ws://127.0.0.1:{b.port}/api/ws/notifications?token={ws_token}").close()
    log = b.logfile.read_text()
    assert '"WebSocket /api/ws/notifications?token=[redacted]"' in log
    assert "token=[redacted]" in log and token not in log and ws_token not in log


def test_websocket_resumes_with_since_and_keeps_alive(servers, team):
    api_a, b = servers
    _org, task, alice, bob, _carol = team
    move(api_a, task, alice, "in_progress")
    seen, _invitation = published_inbox(api_a, bob, 2)  # newest first
    move(api_a, task, alice, "in_review")
    move(api_a, task, alice, "done")
    token = api_a.post("/api/notifications/stream-token", headers=bob.headers).json()["token"]
    socket = WsClient(f"ws://127.0.0.1:{b.port}/api/ws/notifications?token={token}&since={seen['seq']}")
    missed = [socket.next() for _ in range(2)]
    assert [e["data"]["data"]["new_status"] for e in missed] == ["in_review", "done"]
    assert socket.next("ping", timeout=3) == {"event": "ping"}  # the test servers ping every second
    socket.close()


def test_removed_member_hears_nothing_more(servers, team):
    api_a, b = servers
    org_id, task, alice, bob, _carol = team
    api_a.patch(f"/api/tasks/{task['id']}", json={"assignee_id": bob.id}, headers=alice.headers)
    inbox = published_inbox(api_a, bob, 2)
    assert {i["type"] for i in inbox} == {"invitation.received", "task.assigned"}
    stream = SseClient(stream_url(b, bob))
    stream.next("unread_count")
    assert api_a.delete(f"/api/orgs/{org_id}/members/{bob.id}", headers=alice.headers).status_code == 204
    assert stream.ended.wait(5), "the removed member's stream stayed open"

    after = api_a.get(f"/api/tasks/{task['id']}", headers=alice.headers).json()
    assert after["assignee_id"] is None and bob.id not in after["watcher_ids"]
    # What the organization told him is no longer his to read (its task titles); his invitation is.
    kept = api_a.get("/api/notifications", headers=bob.headers).json()["items"]
    assert [i["type"] for i in kept] == ["invitation.received"] and unread_via_api(api_a, bob) == 0
    move(api_a, task, alice, "done")
    api_a.post(f"/api/orgs/{org_id}/announcements", json={"title": "Members only"}, headers=alice.headers)
    assert api_a.get("/api/notifications", headers=bob.headers).json()["items"] == kept


@pytest.mark.parametrize("change", ["left", "joined"])
def test_a_membership_change_whose_message_was_lost_still_ends_the_stream(servers, team, make_org, change):
    """Changed in the database with no message to the streams (as when Redis was down at that moment):
    the hub's periodic check ends the stream (LIVE_MEMBERSHIP_CHECK_SECONDS, 1 s here), and the
    client reconnects with the organizations the user has now."""
    _api_a, b = servers
    org_id, _task, alice, bob, _carol = team
    other_org = make_org(alice)
    stream = SseClient(stream_url(b, bob))
    stream.next("unread_count")
    with SessionLocal() as session:
        if change == "left":
            bobs = delete(Membership).where(Membership.org_id == org_id, Membership.user_id == bob.id)
            session.execute(bobs)
        else:
            session.add(Membership(org_id=other_org, user_id=bob.id, role=Role.member))
        session.commit()
    assert stream.ended.wait(5), "the stream kept the organizations it opened with"
    stream.close()


def test_a_password_reset_ends_the_users_open_streams(servers, team):
    api_a, b = servers
    _org, _task, _alice, bob, _carol = team
    stream = SseClient(stream_url(b, bob))
    stream.next("unread_count")
    with SessionLocal() as session:
        fingerprint = password_fingerprint(session.get_one(User, bob.id).password_hash)
    reset = create_token(bob.id, "reset", timedelta(minutes=5), pwd=fingerprint)
    confirm = {"token": reset, "password": "a brand new password"}
    assert api_a.post("/api/auth/password-reset/confirm", json=confirm).status_code == 200
    assert stream.ended.wait(5), "a stream opened before the reset stayed open"


def test_a_client_that_saw_no_notification_still_resumes_without_a_gap(servers, team):
    api_a, b = servers
    _org, task, alice, bob, _carol = team
    stream = SseClient(stream_url(b, bob))
    first = stream.next("unread_count")
    assert "id" in first  # EventSource remembers it and sends it back as Last-Event-ID
    stream.close()
    move(api_a, task, alice, "in_progress")
    token = api_a.post("/api/notifications/stream-token", headers=bob.headers).json()["token"]
    resumed = SseClient(
        f"{b.url}/api/notifications/stream?token={token}", headers={"Last-Event-ID": str(first["id"])}
    )
    assert resumed.next()["data"]["data"]["new_status"] == "in_progress"
    resumed.close()


def test_the_eleventh_stream_of_a_user_closes_the_oldest_across_processes(servers, api_servers, team):
    from src.notifications.live import TOO_MANY_STREAMS

    api_a, _b = servers
    _org, _task, _alice, bob, _carol = team
    token = api_a.post("/api/notifications/stream-token", headers=bob.headers).json()["token"]
    a, b = api_servers
    socket = WsClient(f"ws://127.0.0.1:{a.port}/api/ws/notifications?token={token}")  # the oldest
    streams = [SseClient(f"{(a, b)[n % 2].url}/api/notifications/stream?token={token}") for n in range(9)]
    assert not socket.ended.wait(0.3), "ten streams are allowed"

    eleventh = SseClient(f"{b.url}/api/notifications/stream?token={token}")
    assert socket.next("closed")["data"] == {"reason": TOO_MANY_STREAMS}
    assert socket.ended.wait(5)
    assert (socket.socket.close_code, socket.socket.close_reason) == (1008, TOO_MANY_STREAMS)

    twelfth = SseClient(f"{b.url}/api/notifications/stream?token={token}")
    assert streams[0].next("closed")["data"] == {"reason": TOO_MANY_STREAMS}  # an SSE stream on a
    assert streams[0].ended.wait(5)
    assert not any(stream.ended.is_set() for stream in [*streams[1:], eleventh, twelfth])
    for stream in [*streams, eleventh, twelfth]:
        stream.close()


def test_without_redis_the_stream_limit_holds_per_process(monkeypatch):
    import asyncio

    from src.notifications.live import TOO_MANY_STREAMS, LiveHub, settings

    monkeypatch.setattr(settings, "streams_per_user", 2)

    async def open_three() -> list:
        hub = LiveHub()  # never connected to Redis
        subscribers = []
        for _ in range(3):
            subscribers.append(hub.subscribe(1, set()))
            hub.limit_streams(subscribers[-1])
        return subscribers

    oldest, *newer = asyncio.run(open_three())
    assert oldest.closing and oldest.reason == TOO_MANY_STREAMS
    assert not any(s.closing for s in newer)


def test_streams_opened_together_are_listed_in_one_call_and_each_user_keeps_the_newest(
    monkeypatch, redis_url
):
    """Two processes' hubs (one Redis): what one process opens within LIST_DELAY is listed in one
    script call, a user's two new streams in it included, and each user keeps the newest two."""
    import asyncio
    import json

    import redis

    from src.notifications.live import CHANNEL, LIST_DELAY, TOO_MANY_STREAMS, LiveHub, settings

    monkeypatch.setattr(settings, "streams_per_user", 2)
    store = redis.Redis.from_url(redis_url)
    store.delete("herald:streams:7001", "herald:streams:7002")
    listener = store.pubsub(ignore_subscribe_messages=True)
    listener.subscribe(CHANNEL)

    def script_calls() -> int:
        stats = store.info("commandstats").get("cmdstat_evalsha", {})
        return stats.get("calls", 0) - stats.get("failed_calls", 0) - stats.get("rejected_calls", 0)

    calls_before = script_calls()

    async def scenario() -> tuple[list, list]:
        older, newer = LiveHub(), LiveHub()
        for hub in (older, newer):
            hub.connected.set()  # as if subscribed: list in Redis
        first = [older.subscribe(7001, frozenset()) for _ in range(2)]
        for subscriber in first:
            older.limit_streams(subscriber)
        await asyncio.sleep(3 * LIST_DELAY)
        second = [newer.subscribe(user_id, frozenset()) for user_id in (7001, 7001, 7002)]
        for subscriber in second:
            newer.limit_streams(subscriber)
        await asyncio.sleep(3 * LIST_DELAY)
        for hub in (older, newer):
            await hub.stop()
        return first, second

    first, second = asyncio.run(scenario())
    assert script_calls() - calls_before == 2  # one per process
    listed = {user: store.zrange(f"herald:streams:{user}", 0, -1) for user in (7001, 7002)}
    assert listed == {
        7001: [second[0].id.encode(), second[1].id.encode()],
        7002: [second[2].id.encode()],
    }
    closings, deadline = [], time.monotonic() + 5
    while sum(len(c["stream_ids"]) for c in closings) < 2 and time.monotonic() < deadline:
        if message := listener.get_message(timeout=0.2):
            closings.append(json.loads(message["data"]))
    # A close for every older stream, in every process: each new stream of 7001 trimmed one off.
    closed = sorted(stream_id for c in closings for stream_id in c["stream_ids"])
    assert closed == sorted(s.id for s in first)
    assert {(c["user_id"], c["reason"]) for c in closings} == {(7001, TOO_MANY_STREAMS)}
    listener.close()


def test_a_stream_that_ends_before_it_is_listed_leaves_no_entry_to_count_against_its_user(redis_url):
    """Opened and gone within LIST_DELAY: its removal must not overtake its listing in Redis, or the
    leftover entry would count as one of the user's streams and could close a live one."""
    import asyncio

    import redis

    from src.notifications.live import LIST_DELAY, LiveHub

    store = redis.Redis.from_url(redis_url)
    store.delete("herald:streams:7003")

    async def scenario() -> None:
        hub = LiveHub()
        hub.connected.set()  # as if subscribed: list in Redis
        brief, lasting = hub.subscribe(7003, frozenset()), hub.subscribe(7003, frozenset())
        for subscriber in (brief, lasting):
            hub.limit_streams(subscriber)
        hub.unsubscribe(brief)  # before the listing
        await asyncio.sleep(1.5 * LIST_DELAY)  # the listing is on its way
        hub.unsubscribe(lasting)  # while it may still be in flight
        await asyncio.sleep(4 * LIST_DELAY)
        await hub.stop()

    asyncio.run(scenario())
    assert store.zrange("herald:streams:7003", 0, -1) == []


def test_reads_outside_a_transaction_leave_the_pooled_connection_transactional(db):
    """A stream's start reads without BEGIN and ROLLBACK on PostgreSQL; the connection it returns to
    the pool must not carry that over to the next request's transaction."""
    from sqlalchemy import text

    from src.db import SessionLocal, outside_transaction

    postgresql = db.startswith("postgresql")
    with outside_transaction(SessionLocal()) as session:
        driver = session.connection().connection.driver_connection
        assert session.scalar(text("SELECT 1")) == 1
        if postgresql:
            assert driver.autocommit and driver.info.transaction_status.name == "IDLE"
    if postgresql:  # back in the pool, as it was
        assert not driver.autocommit and driver.info.transaction_status.name == "IDLE"
    with SessionLocal() as session:
        assert session.scalar(text("SELECT 1")) == 1
        driver = session.connection().connection.driver_connection
        if postgresql:
            assert not driver.autocommit and driver.info.transaction_status.name == "INTRANS"


def test_a_subscriber_gets_its_events_in_order_and_is_cut_off_past_the_limit():
    """The hub never waits for a stream: past QUEUE_LIMIT waiting events the subscriber is marked
    lagging (its stream ends, and the client recovers from the database on reconnect)."""
    import asyncio

    from src.notifications.live import QUEUE_LIMIT, Subscriber

    async def scenario() -> None:
        subscriber = Subscriber(1, frozenset({1}))
        waiting = asyncio.create_task(subscriber.next_event())
        await asyncio.sleep(0)  # it waits for an event
        subscriber.offer({"kind": "notification", "n": 0})
        assert (await asyncio.wait_for(waiting, 1))["n"] == 0
        for n in range(1, QUEUE_LIMIT + 1):
            subscriber.offer({"kind": "notification", "n": n})
        assert not subscriber.lagging
        subscriber.offer({"kind": "notification", "n": QUEUE_LIMIT + 1})
        assert subscriber.lagging
        assert [(await subscriber.next_event())["n"] for _ in range(QUEUE_LIMIT)] == list(
            range(1, QUEUE_LIMIT + 1)
        )
        with pytest.raises(TimeoutError):  # nothing past the limit was kept
            async with asyncio.timeout(0.05):
                await subscriber.next_event()
        assert subscriber.woken is None  # a wait cut short leaves no future behind

    asyncio.run(scenario())


def test_the_hub_pings_the_streams_that_were_quiet_for_a_round(monkeypatch):
    import asyncio

    from src.config import settings
    from src.notifications.live import LiveHub

    monkeypatch.setattr(settings, "live_ping_seconds", 0.5)

    async def scenario() -> None:
        hub = LiveHub()
        quiet, busy = hub.subscribe(1, frozenset()), hub.subscribe(2, frozenset())
        pings = asyncio.create_task(hub._ping_quiet_streams())
        await asyncio.sleep(0.25)
        busy.offer({"kind": "unread", "user_id": 2})
        await asyncio.sleep(0.5)  # the first round, at 0.5 s: only the quiet one is pinged
        assert [e["kind"] for e in quiet.waiting] == ["ping"]
        assert [e["kind"] for e in busy.waiting] == ["unread"]
        await asyncio.sleep(0.5)  # the next, at 1 s: both were quiet since
        assert [e["kind"] for e in quiet.waiting] == ["ping", "ping"]
        assert [e["kind"] for e in busy.waiting] == ["unread", "ping"]
        pings.cancel()
        await hub._redis.aclose()

    asyncio.run(scenario())


def test_the_send_watch_cuts_off_a_stream_stuck_in_a_send_and_no_other():
    """A send that cannot complete (the client stopped reading) gets its stream cancelled once it has
    waited LIVE_SEND_TIMEOUT; a stream whose sends complete is left alone."""
    import asyncio

    from src.notifications.send_watch import SendWatch

    async def scenario() -> None:
        watch = SendWatch(timeout=0.3)
        watch.start()
        client_reading = asyncio.Event()

        async def stream(stuck: bool) -> str:
            try:
                for _ in range(20):
                    await watch.send(asyncio.sleep(0) if not stuck else client_reading.wait())
                    await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                assert watch.cut_off(asyncio.current_task())
                return "cut off"
            return "done"

        started = asyncio.get_running_loop().time()
        frozen, healthy = asyncio.create_task(stream(stuck=True)), asyncio.create_task(stream(stuck=False))
        assert await asyncio.wait_for(frozen, 5) == "cut off"
        waited = asyncio.get_running_loop().time() - started
        assert 0.3 <= waited < 1.5, waited
        assert await asyncio.wait_for(healthy, 5) == "done"
        assert not watch.sending, "a finished send is forgotten"
        await watch.stop()

    asyncio.run(scenario())


def test_a_client_that_stops_reading_is_cut_off_after_the_send_timeout(database_url, db, team):
    """Through a real server: the client reads its first event, then nothing. Once its socket's
    buffers are full, the server's send waits; after LIVE_SEND_TIMEOUT the stream is closed."""
    import re
    import socket
    from urllib.parse import urlsplit

    from src.db import SessionLocal
    from src.devserver.processes import ApiServer
    from src.devserver.redis_server import free_port
    from src.notifications.service import NotificationService
    from src.relay import relay
    from tests.conftest import RUN_DIR

    org_id, _task, _alice, bob, _carol = team
    env = {"DATABASE_URL": database_url, "LIVE_SEND_TIMEOUT": "1", "METRICS_TOKEN": "scrape"}
    server = ApiServer(env, RUN_DIR / "api-frozen-client.log", free_port()).start()

    def open_streams() -> float:
        metrics = httpx.get(f"{server.url}/metrics", headers={"Authorization": "Bearer scrape"}).text
        return float(re.search(r"^herald_live_streams (\S+)$", metrics, re.M).group(1))

    try:
        url = urlsplit(stream_url(server, bob))
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect((url.hostname, url.port))
        client.sendall(f"GET {url.path}?{url.query} HTTP/1.1\r\nHost: herald\r\n\r\n".encode())
        received = b""
        while b"event: unread_count" not in received:
            received += client.recv(4096)
        assert open_streams() == 1
        with SessionLocal() as session:  # ~8 MB for a client that reads nothing more
            for n in range(8):
                NotificationService.notify(
                    session, org_id, [bob.id] * 16, "big", f"Big {n}", body="x" * 60_000
                )
                session.commit()
        assert relay.flush(10)
        deadline = time.monotonic() + 15
        while open_streams() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert open_streams() == 0, "the frozen client's stream is still open"
        client.close()
    finally:
        server.stop()
