"""Accounts against the real worker and SMTP sink: confirmed addresses, password resets, and answers
that do not say whether an email is registered."""

import re
import statistics
import time
from datetime import timedelta

import jwt
import pytest
from sqlalchemy import func, select

from src.auth.models import User
from src.config import settings
from src.db import SessionLocal
from src.orgs.models import Membership
from tests.test_emails import wait_until

PASSWORD = "correct horse battery"


def mail_to(sink, address: str, subject_part: str):
    """The text of the newest email to `address` whose subject has `subject_part`, once it arrived."""

    def found():
        for mail in reversed(sink.messages):
            if address in mail.rcpt_tos and subject_part in mail.message["Subject"]:
                return mail.message.get_body(("plain",)).get_content()
        return None

    return wait_until(found, message=f"an email to {address} about {subject_part!r}")


@pytest.fixture
def required(monkeypatch):
    monkeypatch.setattr(settings, "email_verification", "required")


def test_unconfirmed_accounts_cannot_log_in_nor_get_task_mail_until_they_follow_the_link(
    client, worker, sink, required, make_user, make_org
):
    signup = {"email": "Vera@Example.com", "password": PASSWORD, "name": "Vera"}
    registered = client.post("/api/auth/register", json=signup)
    assert registered.status_code == 202
    refused = client.post("/api/auth/login", json={"email": "vera@example.com", "password": PASSWORD})
    assert refused.status_code == 403 and "confirm your email address" in refused.json()["detail"]

    # Vera joined before verification was required: she is a member whose address nobody confirmed.
    alice, bob = make_user("alice"), make_user("bob")
    org_id = make_org(alice, bob)
    with SessionLocal() as session:
        vera = session.scalars(select(User).where(User.email == "vera@example.com")).one()
        session.add(Membership(org_id=org_id, user_id=vera.id, role="member"))
        session.commit()
    task = client.post(
        f"/api/orgs/{org_id}/tasks",
        json={"title": "Ship it", "assignee_id": vera.id, "watcher_ids": [bob.id]},
        headers=alice.headers,
    ).json()
    client.patch(f"/api/tasks/{task['id']}", json={"status": "in_progress"}, headers=alice.headers)
    mail_to(sink, bob.email, "in_progress")
    confirmation = mail_to(sink, "vera@example.com", "Confirm your address")
    assert not [
        m for m in sink.messages if "vera@example.com" in m.rcpt_tos and "Ship it" in m.message["Subject"]
    ]

    # The link leads to the web app's page; following it (as a mail scanner does) confirms nothing.
    token = re.search(r"https?://\S+/#/verify\?token=(\S+)", confirmation).group(1)
    scanned = client.get("/api/auth/verify-email", params={"token": token}, follow_redirects=False)
    assert scanned.status_code == 303 and scanned.headers["location"] == f"/#/verify?token={token}"
    credentials = {"email": "vera@example.com", "password": PASSWORD}
    assert client.post("/api/auth/login", json=credentials).status_code == 403
    confirmed = client.post("/api/auth/verify-email", json={"token": token})  # the page's button
    assert confirmed.status_code == 200, confirmed.text
    again = client.post("/api/auth/verify-email", json={"token": token})
    assert again.status_code == 409 and "already used" in again.json()["detail"]
    login = client.post("/api/auth/login", json={"email": "vera@example.com", "password": PASSWORD})
    assert login.status_code == 200
    me = client.get("/api/me", headers={"Authorization": f"Bearer {login.json()['access_token']}"}).json()
    assert me["email_verified_at"] is not None

    client.patch(f"/api/tasks/{task['id']}", json={"status": "done"}, headers=alice.headers)
    assert "Ship it" in mail_to(sink, "vera@example.com", "done")


def test_optional_verification_lets_an_unconfirmed_account_log_in(client, worker, sink):
    signup = {"email": "otto@example.com", "password": PASSWORD, "name": "Otto"}
    assert client.post("/api/auth/register", json=signup).status_code == 202
    assert (
        client.post("/api/auth/login", json={"email": signup["email"], "password": PASSWORD}).status_code
        == 200
    )
    mail_to(sink, "otto@example.com", "Confirm your address")


def test_register_answers_alike_for_new_and_registered_addresses(client, worker, sink, make_user):
    bob = make_user("bob")
    new = client.post(
        "/api/auth/register", json={"email": "nina@example.com", "password": PASSWORD, "name": "N"}
    )
    taken = client.post(
        "/api/auth/register", json={"email": bob.email, "password": "other-pass", "name": "B"}
    )
    assert (new.status_code, new.json()) == (taken.status_code, taken.json()) == (202, new.json())
    assert "Someone tried to sign up" in mail_to(sink, bob.email, "Someone tried to sign up")
    with SessionLocal() as session:
        assert session.scalar(select(func.count()).select_from(User).where(User.email == bob.email)) == 1
    # The real owner's password still works; the intruder's does not.
    assert client.post("/api/auth/login", json={"email": bob.email, "password": PASSWORD}).status_code == 200
    assert (
        client.post("/api/auth/login", json={"email": bob.email, "password": "other-pass"}).status_code == 401
    )


def test_login_takes_as_long_for_an_unknown_email(client, make_user):
    bob = make_user("bob")
    times: dict[str, list[float]] = {bob.email: [], "nobody@example.com": []}
    for attempt in range(21):  # interleaved, so a busy moment of the machine weighs on both alike
        for email, seconds in times.items():
            started = time.perf_counter()
            answer = client.post("/api/auth/login", json={"email": email, "password": "wrong password"})
            if attempt:  # the first round warms both paths
                seconds.append(time.perf_counter() - started)
            assert answer.status_code == 401 and answer.json() == {"detail": "wrong email or password"}
    registered, unknown = (statistics.median(seconds) for seconds in times.values())
    assert abs(registered - unknown) / registered < 0.2, (registered, unknown)


def test_password_reset_by_email_works_once(client, worker, sink, make_user):
    bob = make_user("bob")
    known = client.post("/api/auth/password-reset", json={"email": bob.email})
    unknown = client.post("/api/auth/password-reset", json={"email": "nobody@example.com"})
    assert (known.status_code, known.json()) == (unknown.status_code, unknown.json())
    assert known.status_code == 202
    token = re.search(r"\b(ey[\w-]+\.[\w-]+\.[\w-]+)", mail_to(sink, bob.email, "Reset your")).group(1)
    stream_token = client.post("/api/notifications/stream-token", headers=bob.headers).json()["token"]

    confirm = {"token": token, "password": "a brand new password"}
    assert client.post("/api/auth/password-reset/confirm", json=confirm).status_code == 200
    # Whoever held his tokens (the reason to reset, often) holds nothing that works any more.
    assert client.get("/api/me", headers=bob.headers).status_code == 401
    refused = client.get(f"/api/notifications/stream?token={stream_token}")
    assert refused.status_code == 401 and refused.json()["detail"] == "invalid or expired token"
    reused = client.post("/api/auth/password-reset/confirm", json={**confirm, "password": "yet another one"})
    assert reused.status_code == 422 and "invalid, used or expired" in reused.json()["detail"]
    assert client.post("/api/auth/login", json={"email": bob.email, "password": PASSWORD}).status_code == 401
    new_login = {"email": bob.email, "password": "a brand new password"}
    logged_in = client.post("/api/auth/login", json=new_login)
    assert logged_in.status_code == 200
    fresh = {"Authorization": f"Bearer {logged_in.json()['access_token']}"}
    assert client.get("/api/me", headers=fresh).json()["email"] == bob.email


def test_resend_verification_answers_alike(client, make_user):
    bob = make_user("bob", verified=False)
    answers = [
        client.post("/api/auth/verify-email/resend", json={"email": e}) for e in (bob.email, "x@example.com")
    ]
    assert answers[0].status_code == answers[1].status_code == 202
    assert answers[0].json() == answers[1].json()


def test_inviting_answers_alike_for_registered_and_unknown_addresses(client, make_user, make_org):
    alice, carol = make_user("alice"), make_user("carol")
    org_id = make_org(alice)
    answers = [
        client.post(f"/api/orgs/{org_id}/members", json={"email": email}, headers=alice.headers)
        for email in (carol.email, "stranger@example.com")
    ]
    assert answers[0].status_code == answers[1].status_code == 202
    varying = ("id", "email", "created_at", "expires_at")
    first, second = ({k: v for k, v in a.json().items() if k not in varying} for a in answers)
    assert first == second and answers[0].json().keys() == answers[1].json().keys()


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "1", "typ": "access"},  # no expiry: refused
        {"sub": "1" + "0" * 30, "typ": "access", "exp": 4102444800},  # a subject no row can have
        {"sub": "-1", "typ": "access", "exp": 4102444800},
        {"sub": "\u0661", "typ": "access", "exp": 4102444800},  # a digit, but not an ASCII one
        {"sub": 1, "typ": "access", "exp": 4102444800},
    ],
)
def test_tokens_without_expiry_or_with_an_impossible_subject_are_401(client, make_user, claims):
    make_user("bob")
    token = jwt.encode(claims, settings.secret_key, algorithm="HS256")
    answer = client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 401 and answer.json() == {"detail": "invalid or expired token"}


def test_an_expired_confirmation_link_is_refused(client, make_user):
    from src.auth.security import create_token

    bob = make_user("bob", verified=False)
    expired = create_token(bob.id, "verify", timedelta(seconds=-1), email=bob.email)
    answer = client.post("/api/auth/verify-email", json={"token": expired})
    assert answer.status_code == 422 and "invalid or has expired" in answer.json()["detail"]
    with SessionLocal() as session:
        assert session.get_one(User, bob.id).email_verified_at is None
