"""The notification inbox API, in-process (no streams), on both databases."""

import time

from src.relay import relay


def test_inbox_pages_filters_and_read_state(client, make_user, make_org):
    alice, bob = make_user("alice"), make_user("bob")
    org_id = make_org(alice, bob)
    task = client.post(
        f"/api/orgs/{org_id}/tasks", json={"title": "T", "watcher_ids": [bob.id]}, headers=alice.headers
    )
    for status in ("in_progress", "in_review", "done", "cancelled", "todo"):
        client.patch(f"/api/tasks/{task.json()['id']}", json={"status": status}, headers=alice.headers)
    client.post(f"/api/orgs/{org_id}/announcements", json={"title": "All hands"}, headers=alice.headers)
    assert relay.flush(5)  # the inbox lists notifications once the relay has published them

    first = client.get("/api/notifications?limit=4", headers=bob.headers).json()
    assert first["items"][0]["title"] == "All hands" and len(first["items"]) == 4
    second = client.get(
        f"/api/notifications?limit=4&before={first['next_before']}", headers=bob.headers
    ).json()
    # The oldest is Bob's invitation to the organization, read since he accepted it.
    assert len(second["items"]) == 3 and second["next_before"] is None
    assert second["items"][-1]["type"] == "invitation.received" and second["items"][-1]["read_at"]
    ids = [n["id"] for n in first["items"] + second["items"]]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 7

    assert client.get("/api/notifications/unread-count", headers=bob.headers).json() == {"count": 6}
    read = client.post(f"/api/notifications/{ids[0]}/read", headers=bob.headers).json()
    assert read["read_at"] is not None
    again = client.post(f"/api/notifications/{ids[0]}/read", headers=bob.headers).json()
    assert again["read_at"] == read["read_at"]
    unread = client.get("/api/notifications?unread=true", headers=bob.headers).json()["items"]
    assert [n["id"] for n in unread] == ids[1:-1]
    # The broadcast Bob read stays unread for Alice: read state is per person.
    assert client.get("/api/notifications/unread-count", headers=alice.headers).json() == {"count": 1}

    assert client.post("/api/notifications/read-all", headers=bob.headers).json() == {
        "marked": 5,
        "unread": 0,
    }
    assert client.get("/api/notifications/unread-count", headers=bob.headers).json() == {"count": 0}


def test_inbox_rejects_bad_input_and_strangers(client, make_user, make_org):
    alice, mallory = make_user("alice"), make_user("mallory")
    org_id = make_org(alice)
    made = client.post(
        f"/api/orgs/{org_id}/announcements", json={"title": "Secret"}, headers=alice.headers
    ).json()
    assert client.get("/api/notifications?limit=0", headers=alice.headers).status_code == 422
    assert client.get("/api/notifications?before=abc", headers=alice.headers).status_code == 422
    empty = client.post(f"/api/orgs/{org_id}/announcements", json={"title": ""}, headers=alice.headers)
    assert empty.status_code == 422
    assert relay.flush(5)  # published: a stranger's empty inbox says something only after that
    assert [i["id"] for i in client.get("/api/notifications", headers=alice.headers).json()["items"]] == [
        made["id"]
    ]
    assert client.get("/api/notifications", headers=mallory.headers).json()["items"] == []
    assert client.post(f"/api/notifications/{made['id']}/read", headers=mallory.headers).status_code == 404
    assert client.get("/api/notifications").status_code == 401
    assert client.post("/api/notifications/stream-token").status_code == 401


def test_a_notification_is_not_listed_or_read_before_it_is_published(client, make_user, make_org):
    """A stream counts what it delivers as unread: reading one first would make its count too high."""
    from src.db import SessionLocal
    from src.notifications.models import Notification
    from src.notifications.service import publish_pending

    alice = make_user("alice")
    org_id = make_org(alice)
    with SessionLocal() as session:  # stored, but its publisher has not run yet
        notification = Notification(org_id=org_id, recipient_id=alice.id, type="t", title="Soon", body="")
        session.add(notification)
        session.commit()
    assert client.get("/api/notifications", headers=alice.headers).json()["items"] == []
    assert client.post(f"/api/notifications/{notification.id}/read", headers=alice.headers).status_code == 404
    assert client.post("/api/notifications/read-all", headers=alice.headers).json()["marked"] == 0

    publish_pending()
    [listed] = client.get("/api/notifications", headers=alice.headers).json()["items"]
    assert listed["id"] == notification.id and listed["read_at"] is None


def test_a_burst_of_notifying_commits_is_numbered_in_few_runs_without_a_gap(client, make_user, make_org,
                                                                            monkeypatch):  # fmt: skip
    """Commits back to back, as busy requests make them: their notifications share spaced publishing
    runs, and every one of them still gets its own seq, in id order, with no gap."""
    from sqlalchemy import select

    from src.db import SessionLocal
    from src.notifications import service
    from src.notifications.models import Notification

    alice = make_user("alice")
    org_id = make_org(alice)
    assert relay.flush(5)
    runs = []
    publish = service.publish_pending
    monkeypatch.setattr(service, "publish_pending", lambda: runs.append(1) or publish())
    started = time.monotonic()
    for i in range(40):
        with SessionLocal() as session:
            service.NotificationService.notify(session, org_id, [alice.id], "t", f"Number {i}")
            session.commit()
    committing = time.monotonic() - started
    assert relay.flush(5)
    with SessionLocal() as session:
        burst = select(Notification.seq).where(Notification.type == "t").order_by(Notification.id)
        seqs = list(session.scalars(burst))
    assert len(seqs) == 40 and None not in seqs
    assert seqs == list(range(seqs[0], seqs[0] + 40)), "numbered in id order, gapless"
    most = committing / service.PUBLISH_SPACING_SECONDS + 2  # one at once, one per interval, one flushed
    assert 1 <= len(runs) <= most, f"{len(runs)} publishing runs for 40 commits in {committing:.3f} s"
