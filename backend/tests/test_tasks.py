import threading
import time

import pytest


@pytest.fixture
def team(make_user, make_org):
    alice, bob, carol = make_user("alice"), make_user("bob"), make_user("carol")
    org_id = make_org(alice, bob, carol)
    return org_id, alice, bob, carol


def create(client, org_id, caller, **fields):
    response = client.post(
        f"/api/orgs/{org_id}/tasks", json={"title": "Fix login", **fields}, headers=caller.headers
    )
    assert response.status_code == 201, response.text
    return response.json()


def test_create_get_and_history(client, team):
    org_id, alice, bob, carol = team
    task = create(client, org_id, alice, description="It breaks", assignee_id=bob.id, watcher_ids=[carol.id])
    assert task["status"] == "todo"
    assert task["reporter_id"] == alice.id and task["assignee_id"] == bob.id
    assert task["watcher_ids"] == [carol.id]

    fetched = client.get(f"/api/tasks/{task['id']}", headers=carol.headers)
    assert fetched.status_code == 200 and fetched.json()["title"] == "Fix login"
    assert fetched.json()["watcher_ids"] == [carol.id]

    for status in ("in_progress", "in_review", "done"):
        changed = client.patch(f"/api/tasks/{task['id']}", json={"status": status}, headers=bob.headers)
        assert changed.status_code == 200 and changed.json()["status"] == status
        assert changed.json()["watcher_ids"] == [carol.id]

    events = client.get(f"/api/tasks/{task['id']}/events", headers=alice.headers).json()
    assert [(e["kind"], e["old_value"], e["new_value"], e["actor_id"]) for e in events] == [
        ("created", None, "Fix login", alice.id),
        ("assignee_changed", None, str(bob.id), alice.id),
        ("status_changed", "todo", "in_progress", bob.id),
        ("status_changed", "in_progress", "in_review", bob.id),
        ("status_changed", "in_review", "done", bob.id),
    ]


def test_a_read_and_a_change_show_every_watcher_in_order_and_the_callers_mute(client, make_user, make_org):
    """Watchers come back from the task's own query as one joined string: ids past 9 must still
    sort as numbers, and a patch of several fields records each change once."""
    people = [make_user(f"user{i}") for i in range(12)]
    owner, watchers = people[0], [people[11], people[2], people[10]]
    org_id = make_org(*people)
    task = create(client, org_id, owner, watcher_ids=[w.id for w in watchers])
    expected = sorted(w.id for w in watchers)
    assert expected[-1] >= 10 and task["watcher_ids"] == expected
    assert client.post(f"/api/tasks/{task['id']}/mute", headers=owner.headers).status_code == 200

    read = client.get(f"/api/tasks/{task['id']}", headers=owner.headers).json()
    assert read["watcher_ids"] == expected and read["muted"] is True
    other = client.get(f"/api/tasks/{task['id']}", headers=people[2].headers).json()
    assert other["muted"] is False

    patch = {"title": "Fix logout", "description": "Now", "assignee_id": people[2].id, "status": "done"}
    changed = client.patch(f"/api/tasks/{task['id']}", json=patch, headers=owner.headers)
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert {key: body[key] for key in patch} == patch
    assert body["watcher_ids"] == expected and body["muted"] is True
    assert body["updated_at"] > task["updated_at"]
    assert client.get(f"/api/tasks/{task['id']}", headers=owner.headers).json() == body
    events = client.get(f"/api/tasks/{task['id']}/events", headers=owner.headers).json()
    assert [(e["kind"], e["old_value"], e["new_value"]) for e in events[1:]] == [
        ("title_changed", "Fix login", "Fix logout"),
        ("description_changed", None, None),
        ("assignee_changed", None, str(people[2].id)),
        ("status_changed", "todo", "done"),
    ]


def test_unchanged_status_records_nothing(client, team):
    org_id, alice, *_ = team
    task = create(client, org_id, alice)
    same = client.patch(f"/api/tasks/{task['id']}", json={"status": "todo"}, headers=alice.headers)
    assert same.status_code == 200 and same.json()["status"] == "todo", same.text
    events = client.get(f"/api/tasks/{task['id']}/events", headers=alice.headers).json()
    assert [e["kind"] for e in events] == ["created"]


def test_unknown_status_is_422_and_changes_nothing(client, team):
    org_id, alice, *_ = team
    task = create(client, org_id, alice)
    response = client.patch(f"/api/tasks/{task['id']}", json={"status": "finished"}, headers=alice.headers)
    assert response.status_code == 422
    error = response.json()["detail"][0]
    assert error["loc"] == ["body", "status"] and "in_progress" in error["msg"]
    assert client.get(f"/api/tasks/{task['id']}", headers=alice.headers).json()["status"] == "todo"
    nulled = client.patch(f"/api/tasks/{task['id']}", json={"status": None}, headers=alice.headers)
    assert nulled.status_code == 422 and nulled.json()["detail"] == "status cannot be null"


def test_assignee_and_watchers_must_be_members(client, team, make_user, make_org):
    org_id, alice, *_ = team
    outsider = make_user("outsider")
    make_org(outsider, name="Elsewhere")
    response = client.post(
        f"/api/orgs/{org_id}/tasks", json={"title": "x", "assignee_id": outsider.id}, headers=alice.headers
    )
    assert response.status_code == 422
    assert f"not members: [{outsider.id}]" in response.json()["detail"]
    response = client.post(
        f"/api/orgs/{org_id}/tasks", json={"title": "x", "watcher_ids": [outsider.id]}, headers=alice.headers
    )
    assert response.status_code == 422
    task = create(client, org_id, alice)
    patched = client.patch(
        f"/api/tasks/{task['id']}", json={"assignee_id": outsider.id}, headers=alice.headers
    )
    assert patched.status_code == 422
    watched = client.post(f"/api/tasks/{task['id']}/watchers/{outsider.id}", headers=alice.headers)
    assert watched.status_code == 422
    listed = client.get(f"/api/orgs/{org_id}/tasks", headers=alice.headers).json()
    assert listed["total"] == 1


def test_unassign_and_edit(client, team):
    org_id, alice, bob, _ = team
    task = create(client, org_id, alice, assignee_id=bob.id)
    patched = client.patch(
        f"/api/tasks/{task['id']}", json={"assignee_id": None, "title": "Fix logout"}, headers=alice.headers
    )
    assert patched.json()["assignee_id"] is None and patched.json()["title"] == "Fix logout"


def test_watchers_add_and_remove(client, team):
    org_id, alice, bob, carol = team
    task = create(client, org_id, alice)
    added = client.post(f"/api/tasks/{task['id']}/watchers/{bob.id}", headers=carol.headers)
    assert added.json()["watcher_ids"] == [bob.id]
    again = client.post(f"/api/tasks/{task['id']}/watchers/{bob.id}", headers=carol.headers)
    assert again.json()["watcher_ids"] == [bob.id]
    removed = client.delete(f"/api/tasks/{task['id']}/watchers/{bob.id}", headers=carol.headers)
    assert removed.json()["watcher_ids"] == []
    kinds = [e["kind"] for e in client.get(f"/api/tasks/{task['id']}/events", headers=alice.headers).json()]
    assert kinds == ["created", "watcher_added", "watcher_removed"]


def test_pagination_and_filters(client, team):
    org_id, alice, bob, _ = team
    ids = [
        create(client, org_id, alice, title=f"task {n}", assignee_id=bob.id if n % 2 else None)["id"]
        for n in range(7)
    ]
    client.patch(f"/api/tasks/{ids[0]}", json={"status": "done"}, headers=alice.headers)

    first = client.get(f"/api/orgs/{org_id}/tasks?limit=3", headers=alice.headers).json()
    second = client.get(f"/api/orgs/{org_id}/tasks?limit=3&offset=3", headers=alice.headers).json()
    assert first["total"] == 7 and len(first["items"]) == 3
    assert [t["id"] for t in first["items"] + second["items"]] == sorted(ids, reverse=True)[:6]

    done = client.get(f"/api/orgs/{org_id}/tasks?status=done", headers=alice.headers).json()
    assert [t["id"] for t in done["items"]] == [ids[0]]
    bobs = client.get(f"/api/orgs/{org_id}/tasks?assignee_id={bob.id}", headers=alice.headers).json()
    assert bobs["total"] == 3
    assert client.get(f"/api/orgs/{org_id}/tasks?limit=0", headers=alice.headers).status_code == 422
    assert client.get(f"/api/orgs/{org_id}/tasks?status=nope", headers=alice.headers).status_code == 422


def test_other_org_tasks_are_404(client, team, make_user, make_org):
    org_id, alice, *_ = team
    mallory = make_user("mallory")
    make_org(mallory, name="Evil")
    task = create(client, org_id, alice)
    for method, path, body in (
        ("GET", f"/api/tasks/{task['id']}", None),
        ("PATCH", f"/api/tasks/{task['id']}", {"status": "done"}),
        ("GET", f"/api/tasks/{task['id']}/events", None),
        ("POST", f"/api/tasks/{task['id']}/watchers/{mallory.id}", None),
        ("POST", f"/api/orgs/{org_id}/tasks", {"title": "spam"}),
    ):
        response = client.request(method, path, json=body, headers=mallory.headers)
        assert response.status_code == 404, (method, path)
    assert client.get("/api/tasks/999999", headers=alice.headers).status_code == 404
    assert client.get(f"/api/tasks/{task['id']}", headers=alice.headers).json()["status"] == "todo"


BIG = 2**31  # past PostgreSQL's integer, and 2**70 past anything SQLite stores


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/tasks/{big}"),
        ("patch", "/api/tasks/{big}"),
        ("get", "/api/orgs/{big}"),
        ("get", "/api/orgs/{big}/tasks"),
        ("get", "/api/orgs/{org}/tasks?assignee_id={big}"),
        ("get", "/api/orgs/{org}/tasks?offset={big}"),
        ("post", "/api/tasks/{task}/watchers/{big}"),
        ("delete", "/api/orgs/{org}/members/{big}"),
        ("get", "/api/orgs/{org}/emails?offset={big}"),
        ("post", "/api/orgs/{org}/emails/{big}/retry"),
        ("post", "/api/notifications/{big}/read"),
        ("get", "/api/notifications?before={big}"),
        ("get", "/api/notifications/stream?since={huge}"),
    ],
)
def test_out_of_range_ids_are_422(client, team, method, path):
    org_id, alice, _bob, _carol = team
    task = create(client, org_id, alice)
    for big in (BIG, 2**70):
        url = path.format(big=big, huge=2**63 * (big // BIG), org=org_id, task=task["id"])
        response = client.request(method, url, headers=alice.headers, json={} if method == "patch" else None)
        assert response.status_code == 422, (url, response.text)
        assert "less than or equal" in response.json()["detail"][0]["msg"]


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"title": "   "}, "at least 1 character"),
        ({"title": "\u3000"}, "at least 1 character"),
        ({"title": "a\x00b"}, "control characters"),
        ({"description": "x\x00"}, "control characters"),
        ({"assignee_id": 2**70}, "less than or equal"),
        ({"watcher_ids": [2**31]}, "less than or equal"),
    ],
)
def test_bad_text_and_ids_in_bodies_are_422_and_store_nothing(client, team, fields, problem):
    org_id, alice, _bob, _carol = team
    response = client.post(f"/api/orgs/{org_id}/tasks", json={"title": "ok", **fields}, headers=alice.headers)
    assert response.status_code == 422 and problem in response.json()["detail"][0]["msg"], response.text
    assert client.get(f"/api/orgs/{org_id}/tasks", headers=alice.headers).json()["total"] == 0


def test_invalid_text_is_422_without_echoing_the_input(client):
    body = '{"email": "x@example.com", "password": "secret\\ud800"}'  # a lone surrogate
    response = client.post("/api/auth/login", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert "secret" not in response.text and response.json()["detail"][0]["loc"] == ["body", "password"]


def test_a_padded_title_is_the_same_title(client, team):
    org_id, alice, _bob, _carol = team
    task = create(client, org_id, alice, title="  T1  ")
    assert task["title"] == "T1"
    response = client.patch(f"/api/tasks/{task['id']}", json={"title": " T1 "}, headers=alice.headers)
    assert response.json()["title"] == "T1"
    events = client.get(f"/api/tasks/{task['id']}/events", headers=alice.headers).json()
    assert [e["kind"] for e in events] == ["created"]


def test_last_event_id_that_is_not_ours_is_ignored():
    from src.notifications.api import _since

    assert _since(" 12 ", None) == 12
    assert _since("\u00b2", 5) == 5  # a digit to str.isdigit(), not to int()
    assert _since("9" * 19, 5) == 5  # past any seq
    assert _since(None, None) is None


def test_a_page_of_tasks_shows_each_tasks_own_watchers(client, team):
    org_id, alice, bob, carol = team
    both = create(client, org_id, alice, watcher_ids=[carol.id, bob.id])
    none = create(client, org_id, alice)
    one = create(client, org_id, alice, watcher_ids=[bob.id])
    page = client.get(f"/api/orgs/{org_id}/tasks", headers=alice.headers).json()["items"]
    assert [(t["id"], t["watcher_ids"]) for t in page] == [
        (one["id"], [bob.id]),
        (none["id"], []),
        (both["id"], sorted([bob.id, carol.id])),
    ]


def test_a_change_that_waited_for_the_task_hears_the_watcher_added_meanwhile(client, team, database_url):
    """A change locks its task, and whoever held the lock may have added a watcher: what the change
    then reads of its watchers must include that one (read after the lock, not with it)."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite's write lock serializes whole transactions: nothing is read before it")
    from sqlalchemy import insert, select, text

    from src import db
    from src.db import SessionLocal
    from src.notifications.models import Notification
    from src.tasks.models import Task, task_watchers

    org_id, alice, bob, carol = team
    task = create(client, org_id, alice, assignee_id=bob.id)
    replies: list[object] = []

    def change() -> None:
        try:
            replies.append(
                client.patch(f"/api/tasks/{task['id']}", json={"status": "done"}, headers=bob.headers)
            )
        except Exception as exc:  # reported by the test, not lost in the thread
            replies.append(exc)

    changing = threading.Thread(target=change)
    # Who waits for the holder's lock, asked on a connection of its own, each time afresh: inside a
    # transaction, pg_stat_activity keeps the list of backends it read first.
    blocked = text("SELECT count(*) FROM pg_stat_activity WHERE :holder = ANY(pg_blocking_pids(pid))")
    with SessionLocal() as holder:  # as `POST /api/tasks/{id}/watchers/{carol}` holds it
        try:
            holder.execute(select(Task).where(Task.id == task["id"]).with_for_update())
            holder.execute(insert(task_watchers).values(task_id=task["id"], user_id=carol.id))
            holder_pid = holder.execute(text("SELECT pg_backend_pid()")).scalar()
            changing.start()
            with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as watcher:
                deadline = time.monotonic() + 10
                while not watcher.execute(blocked, {"holder": holder_pid}).scalar():
                    assert time.monotonic() < deadline, "the change never waited for the lock"
                    time.sleep(0.05)
        finally:
            holder.commit()
            if changing.ident is not None:  # started
                changing.join(10)
    [reply] = replies
    assert not isinstance(reply, Exception), reply
    assert reply.status_code == 200, reply.text
    assert reply.json()["watcher_ids"] == [carol.id]
    with SessionLocal() as session:
        told = set(
            session.scalars(
                select(Notification.recipient_id).where(Notification.type == "task.status_changed")
            )
        )
    assert told == {alice.id, carol.id}
