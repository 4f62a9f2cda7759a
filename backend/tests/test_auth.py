from datetime import timedelta

import pytest
from sqlalchemy import event

from src import db
from src.auth.security import create_token


def test_register_login_me(client):
    registered = client.post(
        "/api/auth/register", json={"email": "Ada@Example.com", "password": "s3cret-pass", "name": "Ada"}
    )
    assert registered.status_code == 202, registered.text
    assert "password" not in registered.text and "hash" not in registered.text

    login = client.post("/api/auth/login", json={"email": "ada@example.com", "password": "s3cret-pass"})
    assert login.status_code == 200
    body = login.json()
    assert body["token_type"] == "bearer" and body["expires_in"] > 0

    me = client.get("/api/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200
    assert me.json()["email"] == "ada@example.com" and me.json()["email_verified_at"] is None


def test_registering_twice_keeps_the_first_account(client):
    payload = {"email": "bob@example.com", "password": "s3cret-pass", "name": "Bob"}
    assert client.post("/api/auth/register", json=payload).status_code == 202
    again = client.post(
        "/api/auth/register", json={**payload, "email": "BOB@example.com", "password": "other-pass"}
    )
    assert again.status_code == 202
    assert client.post("/api/auth/login", json=payload).status_code == 200
    stranger = {"email": "bob@example.com", "password": "other-pass"}
    assert client.post("/api/auth/login", json=stranger).status_code == 401


def test_wrong_password_and_unknown_user_are_401(client, make_user):
    alice = make_user("alice")
    wrong = client.post("/api/auth/login", json={"email": alice.email, "password": "not the password"})
    assert wrong.status_code == 401
    assert wrong.json() == {"detail": "wrong email or password"}
    unknown = client.post("/api/auth/login", json={"email": "nobody@example.com", "password": "whatever1"})
    assert unknown.status_code == 401


def test_login_with_correct_password(client, make_user):
    alice = make_user("alice")
    ok = client.post("/api/auth/login", json={"email": alice.email, "password": "correct horse battery"})
    assert ok.status_code == 200


def test_register_validation_says_what_is_wrong(client):
    response = client.post(
        "/api/auth/register", json={"email": "not-an-email", "password": "short", "name": ""}
    )
    assert response.status_code == 422
    fields = {error["loc"][-1] for error in response.json()["detail"]}
    assert fields == {"email", "password", "name"}


def test_endpoints_require_a_valid_token(client, make_user):
    alice = make_user("alice")
    for path in ("/api/me", "/api/orgs", "/api/tasks/1", "/api/orgs/1/tasks"):
        missing = client.get(path)
        assert missing.status_code == 401, path
        assert missing.json()["detail"] == "missing bearer token"
        forged = client.get(path, headers={"Authorization": "Bearer not.a.jwt"})
        assert forged.status_code == 401, path

    expired = create_token(alice.id, "access", timedelta(seconds=-1))
    response = client.get("/api/me", headers={"Authorization": f"Bearer {expired}"})
    assert response.status_code == 401
    assert response.json()["detail"] == "invalid or expired token"


def test_token_for_another_purpose_is_not_an_access_token(client, make_user):
    alice = make_user("alice")
    stream_token = create_token(alice.id, "stream", timedelta(minutes=1))
    response = client.get("/api/me", headers={"Authorization": f"Bearer {stream_token}"})
    assert response.status_code == 401


def test_healthz_is_open(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def test_register_refuses_addresses_plain_smtp_cannot_reach(client):
    response = client.post(
        "/api/auth/register", json={"email": "josé@example.com", "password": "s3cret-pass", "name": "José"}
    )
    assert response.status_code == 422
    assert "Herald cannot send email to this address" in response.text


def test_the_callers_lookup_runs_outside_a_transaction_on_postgresql(client, make_user, database_url):
    """Authentication is one read: on PostgreSQL it needs no BEGIN and COMMIT round trips. So is a
    task's read; a change's queries still run in a transaction."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite reads in a transaction, which takes its lock")
    alice = make_user("alice")

    def tables_in_transaction(method: str) -> dict[str, bool]:
        in_transaction: dict[str, bool] = {}

        def note(conn, _cursor, statement, *_args):
            table = "users" if "FROM users" in statement else "tasks" if "FROM tasks" in statement else None
            if table and table not in in_transaction:
                in_transaction[table] = not conn.connection.driver_connection.autocommit

        event.listen(db.engine, "before_cursor_execute", note)
        try:
            body = {"status": "done"} if method == "PATCH" else None
            reply = client.request(method, "/api/tasks/999999", json=body, headers=alice.headers)
            assert reply.status_code == 404
        finally:
            event.remove(db.engine, "before_cursor_execute", note)
        return in_transaction

    assert tables_in_transaction("GET") == {"users": False, "tasks": False}
    assert tables_in_transaction("PATCH") == {"users": False, "tasks": True}
