import json
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from src.idempotency.service import fingerprint

IN_PROGRESS = "a request with this Idempotency-Key is in progress"
OTHER_REQUEST = "Idempotency-Key was already used with a different request"


@dataclass
class Endpoint:
    path: str
    body: dict[str, Any]
    other_body: dict[str, Any]
    model: type
    created: int = 201  # the status of a first answer


@pytest.fixture
def team(make_user, make_org):
    alice, bob, carol = make_user("alice"), make_user("bob"), make_user("carol")
    return make_org(alice, bob), alice, bob, carol


@pytest.fixture(params=["orgs", "tasks", "announcements", "members"])
def endpoint(request, team, make_user) -> Endpoint:
    """Each endpoint that creates something, with a body that succeeds (by alice), another one that
    would succeed too, and the table its objects land in."""
    from src.invitations.models import Invitation
    from src.notifications.models import Notification
    from src.orgs.models import Organization
    from src.tasks.models import Task

    org_id, _alice, _bob, carol = team
    if request.param == "orgs":
        return Endpoint("/api/orgs", {"name": "Initech"}, {"name": "Globex"}, Organization)
    if request.param == "tasks":
        return Endpoint(f"/api/orgs/{org_id}/tasks", {"title": "Fix login"}, {"title": "Fix logout"}, Task)
    if request.param == "announcements":
        return Endpoint(
            f"/api/orgs/{org_id}/announcements", {"title": "Hello"}, {"title": "Goodbye"}, Notification
        )
    dave = make_user("dave")
    return Endpoint(
        f"/api/orgs/{org_id}/members", {"email": carol.email}, {"email": dave.email}, Invitation, 202
    )


def count(model: type) -> int:
    from src.db import SessionLocal

    with SessionLocal() as session:
        return session.scalar(select(func.count()).select_from(model))


def keyed(caller, key: str | bytes) -> dict[str, Any]:
    return {**caller.headers, "Idempotency-Key": key}


def age_keys(hours: float, key: str | None = None) -> None:
    """Move keys' creation `hours` into the past, as if that much time had gone by."""
    from src.db import SessionLocal, utcnow
    from src.idempotency.models import IdempotencyKey

    statement = update(IdempotencyKey).values(created_at=utcnow() - timedelta(hours=hours))
    if key is not None:
        statement = statement.where(IdempotencyKey.key == key)
    with SessionLocal() as session:
        session.execute(statement)
        session.commit()


def test_retry_gets_the_first_answer_and_creates_nothing(client, team, endpoint):
    _org_id, alice, *_ = team
    before = count(endpoint.model)
    first = client.post(endpoint.path, json=endpoint.body, headers=keyed(alice, "k-1"))
    assert first.status_code == endpoint.created, first.text
    assert "Idempotent-Replayed" not in first.headers
    assert count(endpoint.model) == before + 1

    again = client.post(endpoint.path, json=endpoint.body, headers=keyed(alice, "k-1"))
    # The same JSON with other spacing and key order is the same request.
    respelled = json.dumps(dict(reversed(endpoint.body.items())), indent=2)
    raw = client.post(
        endpoint.path, content=respelled, headers={**keyed(alice, "k-1"), "Content-Type": "application/json"}
    )
    for replay in (again, raw):
        assert replay.status_code == endpoint.created
        assert replay.json() == first.json()
        assert replay.headers["Idempotent-Replayed"] == "true"
    assert count(endpoint.model) == before + 1


def test_same_key_with_another_request_is_422(client, team, endpoint):
    org_id, alice, *_ = team
    client.post(endpoint.path, json=endpoint.body, headers=keyed(alice, "k-1"))
    before = count(endpoint.model)
    other = client.post(endpoint.path, json=endpoint.other_body, headers=keyed(alice, "k-1"))
    assert other.status_code == 422
    assert other.json() == {"detail": OTHER_REQUEST}
    other_path, valid_body = (
        ("/api/orgs", {"name": "Elsewhere"})
        if endpoint.path != "/api/orgs"
        else (f"/api/orgs/{org_id}/tasks", {"title": "Elsewhere"})
    )
    elsewhere = client.post(other_path, json=valid_body, headers=keyed(alice, "k-1"))
    assert elsewhere.status_code == 422 and elsewhere.json() == {"detail": OTHER_REQUEST}
    assert count(endpoint.model) == before


def test_without_a_key_nothing_changes(client, team, endpoint):
    _org_id, alice, *_ = team
    before = count(endpoint.model)
    first = client.post(endpoint.path, json=endpoint.body, headers=alice.headers)
    assert first.status_code == endpoint.created and "Idempotent-Replayed" not in first.headers
    second = client.post(endpoint.path, json=endpoint.other_body, headers=alice.headers)
    assert second.status_code == endpoint.created
    assert count(endpoint.model) == before + 2


def test_users_have_keys_of_their_own(client, team):
    from src.orgs.models import Organization

    _org_id, alice, bob, _carol = team
    before = count(Organization)
    by_alice = client.post("/api/orgs", json={"name": "Initech"}, headers=keyed(alice, "same"))
    by_bob = client.post("/api/orgs", json={"name": "Initech"}, headers=keyed(bob, "same"))
    assert by_alice.status_code == by_bob.status_code == 201
    assert by_alice.json()["id"] != by_bob.json()["id"]
    assert "Idempotent-Replayed" not in by_bob.headers
    assert count(Organization) == before + 2
    # And each one's retry gets their own answer.
    assert (
        client.post("/api/orgs", json={"name": "Initech"}, headers=keyed(bob, "same")).json() == by_bob.json()
    )


def test_refused_invitation_can_be_sent_with_the_same_key_later(client, team):
    org_id, alice, bob, _carol = team
    request = {"email": bob.email, "role": "admin"}
    refused = client.post(f"/api/orgs/{org_id}/members", json=request, headers=keyed(alice, "invite-bob"))
    assert refused.status_code == 409 and "already belongs to a member" in refused.json()["detail"]
    client.delete(f"/api/orgs/{org_id}/members/{bob.id}", headers=alice.headers)
    invited = client.post(f"/api/orgs/{org_id}/members", json=request, headers=keyed(alice, "invite-bob"))
    assert invited.status_code == 202 and "Idempotent-Replayed" not in invited.headers
    assert invited.json()["email"] == bob.email and invited.json()["role"] == "admin"


def test_task_of_a_non_member_can_be_created_with_the_same_key_once_they_join(client, team, join):
    from src.tasks.models import Task

    org_id, alice, _bob, carol = team
    path = f"/api/orgs/{org_id}/tasks"
    refused = client.post(path, json={"title": "Fix login"}, headers=keyed(carol, "t"))
    assert refused.status_code == 404
    join(org_id, alice, carol)
    created = client.post(path, json={"title": "Fix login"}, headers=keyed(carol, "t"))
    assert created.status_code == 201 and created.json()["reporter_id"] == carol.id
    assert count(Task) == 1


def test_announcement_refused_to_a_member_can_be_sent_with_the_same_key_as_admin(client, team, join):
    from src.notifications.models import Notification

    org_id, alice, bob, _carol = team
    path = f"/api/orgs/{org_id}/announcements"
    refused = client.post(path, json={"title": "Hello"}, headers=keyed(bob, "a"))
    assert refused.status_code == 403
    client.delete(f"/api/orgs/{org_id}/members/{bob.id}", headers=alice.headers)
    join(org_id, alice, bob, "admin")
    before = count(Notification)
    sent = client.post(path, json={"title": "Hello"}, headers=keyed(bob, "a"))
    assert sent.status_code == 201 and "Idempotent-Replayed" not in sent.headers
    assert count(Notification) == before + 1


def test_invalid_body_leaves_the_key_unused(client, team):
    from src.orgs.models import Organization

    _org_id, alice, *_ = team
    before = count(Organization)
    invalid = client.post("/api/orgs", json={"name": "   "}, headers=keyed(alice, "o"))
    assert invalid.status_code == 422 and invalid.json()["detail"][0]["loc"] == ["body", "name"]
    created = client.post("/api/orgs", json={"name": "Initech"}, headers=keyed(alice, "o"))
    assert created.status_code == 201 and "Idempotent-Replayed" not in created.headers
    assert count(Organization) == before + 1


def test_a_replayed_invitation_counts_against_no_rate_limit(client, team, monkeypatch):
    """The retry of an invitation that went through gets its first answer, even when the inviter has
    no invitation left this hour: it sends none."""
    from src import ratelimit

    org_id, alice, *_ = team
    monkeypatch.setattr(ratelimit.settings, "rate_limit_invite_per_account", "1/hour")
    monkeypatch.setattr(ratelimit.settings, "rate_limit_invite_per_ip", "1000/hour")
    body = {"email": "once@example.com"}
    first = client.post(f"/api/orgs/{org_id}/members", json=body, headers=keyed(alice, "invite-once"))
    assert first.status_code == 202, first.text
    again = client.post(f"/api/orgs/{org_id}/members", json=body, headers=keyed(alice, "invite-once"))
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    other = {"email": "twice@example.com"}
    refused = client.post(f"/api/orgs/{org_id}/members", json=other, headers=keyed(alice, "invite-two"))
    assert refused.status_code == 429 and "too many invitations" in refused.json()["detail"]


def test_a_body_nested_deeper_than_python_recurses_is_never_a_500(client, team):
    """FastAPI's parser takes a little more depth than a fresh `json.loads` deeper in the stack: around
    the limit, the body's fingerprint could not be computed (a RecursionError, answered 500)."""
    org_id, alice, *_ = team
    for depth in range(800, 1100, 2):
        body = f'{{"title":"x","description":{"[" * depth}{"]" * depth}}}'
        headers = {**keyed(alice, f"deep-{depth}"), "Content-Type": "application/json"}
        answer = client.post(f"/api/orgs/{org_id}/tasks", content=body, headers=headers)
        assert answer.status_code in (400, 422) and answer.json()["detail"], depth
    assert fingerprint("POST", "/x", b"[" * 100_000 + b"]" * 100_000)  # by itself, too


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\tinside", "clé".encode(), b"nul\x7f"])
def test_malformed_key_is_422_and_creates_nothing(client, team, key):
    from src.orgs.models import Organization

    _org_id, alice, *_ = team
    before = count(Organization)
    response = client.post("/api/orgs", json={"name": "Initech"}, headers=keyed(alice, key))
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    assert count(Organization) == before


def test_longest_and_oddest_keys_are_fine(client, team):
    _org_id, alice, *_ = team
    for key in ("~" * 255, 'a key with spaces, "quotes" and {}'):
        first = client.post("/api/orgs", json={"name": "Initech"}, headers=keyed(alice, key))
        again = client.post("/api/orgs", json={"name": "Initech"}, headers=keyed(alice, key))
        assert first.status_code == again.status_code == 201, first.text
        assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"


def test_key_without_an_answer_is_409_in_progress(client, team):
    """The first request committed but has not stored its answer (still running, or it died then)."""
    from src.db import SessionLocal
    from src.idempotency.models import IdempotencyKey
    from src.orgs.models import Organization

    _org_id, alice, *_ = team
    client.post("/api/orgs", json={"name": "Initech"}, headers=keyed(alice, "k"))
    with SessionLocal() as session:
        session.execute(update(IdempotencyKey).values(status_code=None, response_body=None))
        session.commit()
    before = count(Organization)
    retry = client.post("/api/orgs", json={"name": "Initech"}, headers=keyed(alice, "k"))
    assert retry.status_code == 409
    assert retry.json() == {"detail": IN_PROGRESS}
    assert retry.headers["Retry-After"] == "1"
    assert count(Organization) == before


def test_expired_key_counts_as_new(client, team):
    from src.orgs.models import Organization

    _org_id, alice, *_ = team
    before = count(Organization)
    first = client.post("/api/orgs", json={"name": "Initech"}, headers=keyed(alice, "k"))
    age_keys(hours=23)
    assert (
        client.post("/api/orgs", json={"name": "Initech"}, headers=keyed(alice, "k")).json() == first.json()
    )
    age_keys(hours=25)
    second = client.post("/api/orgs", json={"name": "Initech"}, headers=keyed(alice, "k"))
    assert second.status_code == 201 and "Idempotent-Replayed" not in second.headers
    assert second.json()["id"] != first.json()["id"]
    age_keys(hours=25)
    third = client.post("/api/orgs", json={"name": "Globex"}, headers=keyed(alice, "k"))  # another body too
    assert third.status_code == 201 and third.json()["name"] == "Globex"
    assert client.post("/api/orgs", json={"name": "Globex"}, headers=keyed(alice, "k")).json() == third.json()
    assert count(Organization) == before + 3


def test_cleanup_deletes_only_expired_keys(client, team):
    from src.db import SessionLocal
    from src.idempotency.models import IdempotencyKey
    from src.idempotency.tasks.idempotency_tasks import delete_expired_idempotency_keys

    _org_id, alice, bob, _carol = team
    for caller, key in ((alice, "old"), (alice, "recent"), (bob, "old"), (bob, "fresh")):
        client.post("/api/orgs", json={"name": "Initech"}, headers=keyed(caller, key))
    age_keys(hours=25, key="old")
    age_keys(hours=23, key="recent")

    assert delete_expired_idempotency_keys() == 2
    with SessionLocal() as session:
        left = session.execute(select(IdempotencyKey.user_id, IdempotencyKey.key)).all()
    assert sorted(left) == sorted([(alice.id, "recent"), (bob.id, "fresh")])


def test_cleanup_runs_from_beat():
    from src.celery_app import app

    tasks = {entry["task"] for entry in app.conf.beat_schedule.values()}
    assert "src.idempotency.tasks.idempotency_tasks.delete_expired_idempotency_keys" in tasks


def test_concurrent_requests_with_one_key_create_one_object(api_servers, client, team, endpoint):
    """20 at once, spread over two API processes: one does the work, the others get its answer or 409."""
    _org_id, alice, *_ = team
    before = count(endpoint.model)
    start = threading.Barrier(20)
    answers: dict[int, httpx.Response] = {}

    def send(i: int) -> None:
        server = api_servers[i % 2]
        start.wait()
        answers[i] = httpx.post(
            f"{server.url}{endpoint.path}", json=endpoint.body, headers=keyed(alice, "burst"), timeout=60
        )

    threads = [threading.Thread(target=send, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(answers) == 20, "a request raised instead of answering"
    assert count(endpoint.model) == before + 1
    created = [
        a
        for a in answers.values()
        if a.status_code == endpoint.created and "Idempotent-Replayed" not in a.headers
    ]
    assert len(created) == 1, [(a.status_code, a.text) for a in answers.values()]
    for answer in answers.values():
        if answer.status_code == endpoint.created:
            assert answer.json() == created[0].json()
        else:
            assert answer.status_code == 409, answer.text
            assert answer.json() == {"detail": IN_PROGRESS} and answer.headers["Retry-After"] == "1"
    replayed = client.post(endpoint.path, json=endpoint.body, headers=keyed(alice, "burst"))
    assert replayed.json() == created[0].json() and replayed.headers["Idempotent-Replayed"] == "true"
