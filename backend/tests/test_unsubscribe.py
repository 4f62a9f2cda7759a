"""One-click unsubscribe as a mail client does it: the link taken from a real email in the sink."""

import base64
import json
import re
import time

import pytest
from sqlalchemy import delete, select

from src.config import settings
from src.db import SessionLocal
from src.emails.models import EmailQueue
from src.preferences.models import NotificationPreference
from tests.test_emails import wait_until


@pytest.fixture
def mailed(client, make_user, make_org, make_task, worker, sink):
    """A status change mailed to Alice and Carol; returns (task, alice, bob, carol, their emails)."""
    alice, bob, carol = (make_user(n) for n in ("alice", "bob", "carol"))
    org_id = make_org(alice, bob, carol)
    task = make_task(org_id, alice, bob, carol)
    wait_until(lambda: len(sink.messages) == 2, message="the invitations' emails")
    sink.messages.clear()
    client.patch(f"/api/tasks/{task['id']}", json={"status": "in_progress"}, headers=bob.headers)
    wait_until(lambda: len(sink.messages) == 2, message="the status emails")
    by_rcpt = {m.rcpt_tos[0]: m.message for m in sink.messages}
    sink.messages.clear()
    return task, alice, bob, carol, by_rcpt


def https_link(message):
    """The https (or, in tests, http) URL of List-Unsubscribe, as a mail client picks it."""
    targets = re.findall(r"<([^>]+)>", str(message["List-Unsubscribe"]))
    return next(t for t in targets if t.startswith(("https://", "http://")))


def choices(user_id):
    with SessionLocal() as session:
        rows = session.scalars(
            select(NotificationPreference).where(NotificationPreference.user_id == user_id)
        )
        return {(r.event_type, r.channel): r.value for r in rows}


def one_click(client, url, **kwargs):
    """POST as RFC 8058 says a mail client does: form-encoded, no cookies, no authorization."""
    client.cookies.clear()
    return client.post(url, data={"List-Unsubscribe": "One-Click"}, **kwargs)


def test_the_link_from_a_real_email_stops_the_next_one_of_its_type(client, mailed, sink):
    task, alice, bob, carol, by_rcpt = mailed
    message = by_rcpt[carol.email]
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = https_link(message)
    assert url.startswith(f"{settings.public_url}/unsubscribe/")
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    assert f"Stop these emails: {url}" in text and f"{settings.public_url}/preferences" in text
    assert f'href="{url}"' in html

    response = one_click(client, url.removeprefix(settings.public_url))
    assert response.status_code == 200, response.text
    assert response.json()["email"] == {"task_status_changed": {"value": "off", "source": "user"}}
    assert choices(carol.id) == {("task_status_changed", "email"): "off"}
    assert client.get("/api/me/preferences", headers=carol.headers).status_code == 200

    client.patch(f"/api/tasks/{task['id']}", json={"status": "done"}, headers=bob.headers)
    wait_until(lambda: len(sink.messages) >= 1, message="Alice's email")
    time.sleep(1)
    assert [m.rcpt_tos[0] for m in sink.messages] == [alice.email]


def test_the_page_confirms_before_changing_anything_then_offers_all_email_and_undo(client, mailed):
    _task, _alice, _bob, carol, by_rcpt = mailed
    path = https_link(by_rcpt[carol.email]).removeprefix(settings.public_url)
    page = client.get(path)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert (
        "Stop emails about: Task status changes?" in page.text and "Unsubscribe from all email" in page.text
    )
    assert choices(carol.id) == {}  # a GET (a link scanner, a prefetch) changes nothing

    done = client.post(path, data={"List-Unsubscribe": "One-Click", "page": "true"})
    assert done.status_code == 200 and "Undo" in done.text
    assert choices(carol.id) == {("task_status_changed", "email"): "off"}
    undo = re.findall(r'name="restore" value="([^"]*)"', done.text)
    assert undo == ["task_status_changed:"]  # Carol had made no choice: undo drops it again
    restored = client.post(path, data={"restore": undo, "page": "true"})
    assert restored.status_code == 200 and choices(carol.id) == {}

    client.put(
        "/api/me/preferences",
        json={"preferences": {"task_status_changed": {"email": "digest"}}},
        headers=carol.headers,
    )
    everything = client.post(path, data={"scope": "all"})
    assert (
        everything.status_code == 200 and everything.json()["email"]["task_status_changed"]["value"] == "off"
    )
    page = client.post(path, data={"restore": "task_status_changed:digest", "page": "true"})
    assert page.status_code == 200 and choices(carol.id) == {("task_status_changed", "email"): "digest"}


def _tampered(token, **claims):
    header, payload, signature = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data.update(claims)
    forged = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


def test_forged_altered_or_foreign_tokens_are_refused_and_change_nothing(client, mailed):
    _task, alice, _bob, carol, by_rcpt = mailed
    token = https_link(by_rcpt[carol.email]).rpartition("/")[2]
    for bad in (
        _tampered(token, sub=str(alice.id)),  # Carol's link aimed at Alice
        _tampered(token, types=["announcement"]),  # at another type
        token[:-2] + ("AA" if not token.endswith("AA") else "BB"),  # a broken signature
        carol.token,  # an access token is not an unsubscribe link
        "not-a-token",
    ):
        for response in (one_click(client, f"/unsubscribe/{bad}"), client.get(f"/unsubscribe/{bad}")):
            assert response.status_code == 403, (bad, response.text)
            assert "not valid" in response.json()["detail"]
    assert choices(alice.id) == {} and choices(carol.id) == {}

    for body in (
        {},
        {"List-Unsubscribe": "Yes"},
        {"List-Unsubscribe": "One-Click", "scope": "all"},
        {"restore": "x:y"},
    ):
        response = client.post(f"/unsubscribe/{token}", data=body)
        assert response.status_code == 422 and response.json()["detail"], body
    assert choices(carol.id) == {}


def test_transactional_mail_has_no_unsubscribe_and_is_sent_even_with_all_email_off(client, mailed, sink):
    _task, _alice, _bob, carol, by_rcpt = mailed
    path = https_link(by_rcpt[carol.email]).removeprefix(settings.public_url)
    assert client.post(path, data={"scope": "all"}).status_code == 200
    assert client.post("/api/auth/password-reset", json={"email": carol.email}).status_code == 202
    wait_until(lambda: sink.messages, message="the password reset email")
    [reset] = [m.message for m in sink.messages]
    assert "reset the password" in reset.get_body(("plain",)).get_content()
    assert reset["List-Unsubscribe"] is None and reset["List-Unsubscribe-Post"] is None


def test_mailto_is_offered_beside_the_link_when_configured(client, make_user, make_org, monkeypatch):
    monkeypatch.setattr(settings, "unsubscribe_mailto", "unsubscribe@herald.example")
    alice, bob = make_user("alice"), make_user("bob")
    org_id = make_org(alice, bob)
    task = client.post(f"/api/orgs/{org_id}/tasks", json={"title": "T"}, headers=alice.headers).json()
    with SessionLocal() as session:
        session.execute(delete(EmailQueue))
        session.commit()
    client.patch(f"/api/tasks/{task['id']}", json={"status": "done"}, headers=bob.headers)
    with SessionLocal() as session:
        mime = session.scalar(select(EmailQueue.mime))
    header = re.search(r"^List-Unsubscribe: (.*(?:\r\n[ \t].*)*)", mime, re.M).group(1)
    assert "<mailto:unsubscribe@herald.example?subject=unsubscribe%20" in header
    assert f"<{settings.public_url}/unsubscribe/" in header
