"""Preferences as the outbox sees them: the rows a status change writes, on both databases."""

from types import SimpleNamespace

import pytest
from sqlalchemy import delete, event, select

from src import db as herald_db
from src.db import SessionLocal
from src.emails.models import EmailQueue
from src.notifications.models import Notification
from src.preferences.models import DigestItem


@pytest.fixture
def crew(make_user, make_org, make_task):
    """Alice owns the organization; Bob is assigned a task Alice reported, Carol and Dave watch it.
    The invitations' emails and notifications are out of the way."""
    alice, bob, carol, dave = (make_user(n) for n in ("alice", "bob", "carol", "dave"))
    org_id = make_org(alice, bob, carol, dave)
    task = make_task(org_id, alice, bob, carol, dave)
    with SessionLocal() as session:
        session.execute(delete(EmailQueue))
        session.execute(delete(Notification))
        session.commit()
    return SimpleNamespace(org_id=org_id, task=task, alice=alice, bob=bob, carol=carol, dave=dave)


def change(client, crew, status, actor=None):
    """Bob (or `actor`) moves the task; what the change wrote: (email recipients, digest
    recipients, in-app recipients), each a set of user names."""
    actor = actor or crew.bob
    with SessionLocal() as session:
        session.execute(delete(EmailQueue))
        session.execute(delete(Notification))
        session.execute(delete(DigestItem))
        session.commit()
    response = client.patch(f"/api/tasks/{crew.task['id']}", json={"status": status}, headers=actor.headers)
    assert response.status_code == 200, response.text
    names = {u.id: u.email.split("@")[0] for u in (crew.alice, crew.bob, crew.carol, crew.dave)}
    with SessionLocal() as session:
        emails = {e.split("@")[0] for e in session.scalars(select(EmailQueue.to_email))}
        digests = {names[uid] for uid in session.scalars(select(DigestItem.user_id))}
        in_app = {names[uid] for uid in session.scalars(select(Notification.recipient_id))}
    return emails, digests, in_app


def put_mine(client, caller, body):
    return client.put("/api/me/preferences", json=body, headers=caller.headers)


def test_without_choices_every_recipient_is_mailed_at_once_as_before(client, crew):
    emails, digests, in_app = change(client, crew, "in_progress")
    assert emails == {"alice", "carol", "dave"} and digests == set() and in_app == {"alice", "carol", "dave"}


def test_off_queues_nothing_and_digest_queues_nothing_now(client, crew):
    assert (
        put_mine(client, crew.carol, {"preferences": {"task_status_changed": {"email": "off"}}}).status_code
        == 200
    )
    assert (
        put_mine(client, crew.dave, {"preferences": {"task_status_changed": {"email": "digest"}}}).status_code
        == 200
    )
    emails, digests, in_app = change(client, crew, "in_progress")
    assert emails == {"alice"}
    assert digests == {"dave"}
    assert in_app == {"alice", "carol", "dave"}  # the inbox is never digested nor turned off by email choices


def test_in_app_off_keeps_the_email(client, crew):
    put_mine(client, crew.carol, {"preferences": {"task_status_changed": {"in_app": "off"}}})
    emails, _digests, in_app = change(client, crew, "done")
    assert emails == {"alice", "carol", "dave"} and in_app == {"alice", "dave"}


def test_org_defaults_apply_unless_a_user_chose_and_a_mute_beats_both(client, crew):
    defaults = {"defaults": {"task_status_changed": {"email": "digest"}}}
    response = client.put(
        f"/api/orgs/{crew.org_id}/notification-defaults", json=defaults, headers=crew.alice.headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["defaults"]["task_status_changed"]["email"] == {
        "value": "digest",
        "source": "organization",
    }
    put_mine(client, crew.carol, {"preferences": {"task_status_changed": {"email": "immediate"}}})

    emails, digests, in_app = change(client, crew, "in_progress")
    assert emails == {"carol"} and digests == {"alice", "dave"} and in_app == {"alice", "carol", "dave"}

    mine = client.get("/api/me/preferences", headers=crew.carol.headers).json()
    [org] = mine["organizations"]
    assert org["preferences"]["task_status_changed"]["email"] == {"value": "immediate", "source": "user"}
    assert org["preferences"]["task_status_changed"]["in_app"] == {"value": "on", "source": "default"}
    dave = client.get("/api/me/preferences", headers=crew.dave.headers).json()["organizations"][0]
    assert dave["preferences"]["task_status_changed"]["email"] == {
        "value": "digest",
        "source": "organization",
    }

    muted = client.post(f"/api/tasks/{crew.task['id']}/mute", headers=crew.carol.headers)
    assert muted.status_code == 200 and muted.json() == {"task_id": crew.task["id"], "muted": True}
    emails, digests, in_app = change(client, crew, "in_review")
    assert emails == set() and digests == {"alice", "dave"} and in_app == {"alice", "dave"}
    task = client.get(f"/api/tasks/{crew.task['id']}", headers=crew.carol.headers).json()
    assert crew.carol.id in task["watcher_ids"]  # muted, still watching

    assert (
        client.delete(f"/api/tasks/{crew.task['id']}/mute", headers=crew.carol.headers).json()["muted"]
        is False
    )
    emails, _digests, in_app = change(client, crew, "done")
    assert emails == {"carol"} and "carol" in in_app


def test_dropping_a_choice_falls_back_to_the_org_default(client, crew):
    client.put(
        f"/api/orgs/{crew.org_id}/notification-defaults",
        json={"defaults": {"task_status_changed": {"email": "off"}}},
        headers=crew.alice.headers,
    )
    put_mine(client, crew.dave, {"preferences": {"task_status_changed": {"email": "immediate"}}})
    assert change(client, crew, "in_progress")[0] == {"dave"}
    body = put_mine(client, crew.dave, {"preferences": {"task_status_changed": {"email": None}}}).json()
    assert body["choices"] == {}
    assert change(client, crew, "done")[0] == set()


def test_a_muted_assignment_notifies_nobody(client, crew):
    def assign(user):
        answer = client.patch(
            f"/api/tasks/{crew.task['id']}", json={"assignee_id": user.id}, headers=crew.alice.headers
        )
        assert answer.status_code == 200 and answer.json()["assignee_id"] == user.id, answer.text

    assert client.post(f"/api/tasks/{crew.task['id']}/mute", headers=crew.carol.headers).status_code == 200
    assign(crew.carol)
    put_mine(client, crew.dave, {"preferences": {"task_assigned": {"in_app": "off"}}})
    assign(crew.dave)
    assign(crew.bob)
    with SessionLocal() as session:
        assigned = list(
            session.scalars(select(Notification.recipient_id).where(Notification.type == "task.assigned"))
        )
    assert assigned == [crew.bob.id]


def test_recipients_and_their_choices_take_one_query(client, crew, make_user, make_org):
    """A status change reads who hears of it and what each chose (their own choice, the
    organization's default, a mute) in the statement that reads the recipients."""
    put_mine(client, crew.carol, {"preferences": {"task_status_changed": {"email": "off", "in_app": "off"}}})
    client.post(f"/api/tasks/{crew.task['id']}/mute", headers=crew.dave.headers)
    other_owner = make_user("olga")
    other_org = make_org(other_owner)  # its default must not reach Alice's organization
    defaults = {"defaults": {"task_status_changed": {"email": "digest"}}}
    url = f"/api/orgs/{other_org}/notification-defaults"
    assert client.put(url, json=defaults, headers=other_owner.headers).status_code == 200
    statements = []

    def listener(*args):
        statements.append(args[2])

    event.listen(herald_db.engine, "before_cursor_execute", listener)
    try:
        emails, digests, in_app = change(client, crew, "in_progress")
    finally:
        event.remove(herald_db.engine, "before_cursor_execute", listener)
    choices = [s for s in statements if "notification_preferences" in s and s.lstrip().startswith("SELECT")]
    assert len(choices) == 1 and "FROM users" in choices[0] and "task_mutes" in choices[0], choices
    assert (emails, digests, in_app) == ({"alice"}, set(), {"alice"})


def test_the_catalogue_has_labels_and_says_what_each_type_offers(client, crew):
    body = client.get("/api/me/preferences", headers=crew.bob.headers).json()
    kinds = {k["type"]: k for k in body["catalogue"]}
    assert kinds["task_status_changed"]["label"] == "Task status changes"
    assert kinds["task_status_changed"]["channels"] == {
        "email": ["immediate", "digest", "off"],
        "in_app": ["on", "off"],
    }
    assert kinds["account"]["transactional"] is True and kinds["account"]["channels"] == {}
    assert body["digest"] == {"frequency": "hourly", "hour": 9, "timezone": "UTC"}
    digest = {"frequency": "daily", "hour": 7, "timezone": "Europe/Paris"}
    assert put_mine(client, crew.bob, {"digest": digest}).json()["digest"] == digest


@pytest.mark.parametrize(
    "body",
    [
        {"preferences": {"task_status_changed": {"email": "weekly"}}},
        {"preferences": {"task_status_changed": {"sms": "on"}}},
        {"preferences": {"no_such_event": {"email": "off"}}},
        {"preferences": {"account": {"email": "off"}}},
        {"preferences": {"announcement": {"in_app": "off"}}},
        {"preferences": {"task_assigned": {"email": "off"}}},
        {"preferences": {"task_status_changed": {"email": "off"}}, "digest": {"timezone": "Mars/Olympus"}},
        {"preferences": {"task_status_changed": {"email": "off"}}, "digest": {"hour": 24}},
        {
            "preferences": {"task_status_changed": {"email": "off"}},
            "digest": {"timezone": "../../etc/passwd"},
        },
        {"preferences": {"task_status_changed": {"email": "off"}}, "extra": 1},
    ],
)
def test_bad_preferences_are_a_422_that_changes_nothing(client, crew, body):
    before = client.get("/api/me/preferences", headers=crew.carol.headers).json()
    response = put_mine(client, crew.carol, body)
    assert response.status_code == 422 and response.json()["detail"]
    assert client.get("/api/me/preferences", headers=crew.carol.headers).json() == before


def test_only_owners_and_admins_set_org_defaults_and_outsiders_see_nothing(client, crew, make_user):
    url = f"/api/orgs/{crew.org_id}/notification-defaults"
    body = {"defaults": {"task_status_changed": {"email": "off"}}}
    refused = client.put(url, json=body, headers=crew.bob.headers)
    assert refused.status_code == 403 and "owner or admin" in refused.json()["detail"]
    assert client.get(url, headers=crew.bob.headers).json()["defaults"]["task_status_changed"]["email"] == {
        "value": "immediate",
        "source": "default",
    }
    mallory = make_user("mallory")
    assert client.get(url, headers=mallory.headers).status_code == 404
    assert client.put(url, json=body, headers=mallory.headers).status_code == 404
    assert client.post(f"/api/tasks/{crew.task['id']}/mute", headers=mallory.headers).status_code == 404
    assert (
        client.put(
            url, json={"defaults": {"task_status_changed": {"email": "never"}}}, headers=crew.alice.headers
        ).status_code
        == 422
    )
    assert change(client, crew, "done")[0] == {"alice", "carol", "dave"}


def test_notifications_carry_their_event_type_and_filter_by_it(client, crew):
    client.patch(f"/api/tasks/{crew.task['id']}", json={"status": "done"}, headers=crew.bob.headers)
    client.patch(
        f"/api/tasks/{crew.task['id']}", json={"assignee_id": crew.carol.id}, headers=crew.alice.headers
    )
    from src.relay import relay

    assert relay.flush(5)
    everything = client.get("/api/notifications", headers=crew.carol.headers).json()["items"]
    assert {n["event_type"] for n in everything} == {"task_status_changed", "task_assigned"}
    only = client.get("/api/notifications?type=task_assigned", headers=crew.carol.headers).json()["items"]
    assert [n["event_type"] for n in only] == ["task_assigned"] and only[0]["type"] == "task.assigned"
    bad = client.get("/api/notifications?type=nonsense", headers=crew.carol.headers)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "type"]
