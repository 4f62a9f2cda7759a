"""Joining an organization: nobody is a member, or mailed about its tasks, before accepting."""

from datetime import timedelta

from sqlalchemy import update

from src.db import SessionLocal, utcnow
from src.invitations.models import Invitation
from src.relay import relay
from tests.test_signup import mail_to


def invite(client, org_id, inviter, email, role="member"):
    answer = client.post(
        f"/api/orgs/{org_id}/members", json={"email": email, "role": role}, headers=inviter.headers
    )
    assert answer.status_code == 202, answer.text
    return answer.json()


def members(client, org_id, caller):
    return {
        m["user"]["email"] for m in client.get(f"/api/orgs/{org_id}/members", headers=caller.headers).json()
    }


def test_an_invitee_is_nobody_in_the_organization_until_accepting(client, worker, sink, make_user, make_org):
    alice, bob, carol = make_user("alice"), make_user("bob"), make_user("carol")
    org_id = make_org(alice, bob)
    invitation = invite(client, org_id, alice, carol.email)
    assert invitation["status"] == "pending" and invitation["email"] == carol.email

    text = mail_to(sink, carol.email, "invited you to Acme")
    assert "Alice invited this address" in text and "/#/invitations" in text
    inbox = client.get("/api/notifications", headers=carol.headers).json()["items"]
    assert [n["type"] for n in inbox] == ["invitation.received"]
    assert inbox[0]["data"] == {"invitation_id": invitation["id"]}

    # Not a member: not listed, cannot be assigned or watch, gets no task email.
    assert carol.email not in members(client, org_id, alice)
    assigned = client.post(
        f"/api/orgs/{org_id}/tasks", json={"title": "T", "assignee_id": carol.id}, headers=alice.headers
    )
    assert assigned.status_code == 422
    task = client.post(
        f"/api/orgs/{org_id}/tasks", json={"title": "Launch", "watcher_ids": [bob.id]}, headers=alice.headers
    ).json()
    assert (
        client.post(f"/api/tasks/{task['id']}/watchers/{carol.id}", headers=alice.headers).status_code == 422
    )
    client.patch(f"/api/tasks/{task['id']}", json={"status": "in_progress"}, headers=alice.headers)
    mail_to(sink, bob.email, "Launch")
    assert not [m for m in sink.messages if carol.email in m.rcpt_tos and "Launch" in m.message["Subject"]]
    assert client.get(f"/api/orgs/{org_id}", headers=carol.headers).status_code == 404

    listed = client.get("/api/invitations", headers=carol.headers).json()
    assert [(i["id"], i["org_name"], i["invited_by"], i["role"]) for i in listed] == [
        (invitation["id"], "Acme", "Alice", "member")
    ]
    assert client.get("/api/invitations", headers=bob.headers).json() == []
    stolen = client.post(f"/api/invitations/{invitation['id']}/accept", headers=bob.headers)
    assert stolen.status_code == 404

    accepted = client.post(f"/api/invitations/{invitation['id']}/accept", headers=carol.headers)
    assert accepted.status_code == 200 and accepted.json()["role"] == "member"
    assert carol.email in members(client, org_id, alice)
    assert client.get("/api/invitations", headers=carol.headers).json() == []
    again = client.post(f"/api/invitations/{invitation['id']}/accept", headers=carol.headers)
    assert again.status_code == 409
    assert (
        client.post(f"/api/tasks/{task['id']}/watchers/{carol.id}", headers=alice.headers).status_code == 200
    )
    client.patch(f"/api/tasks/{task['id']}", json={"status": "done"}, headers=alice.headers)
    mail_to(sink, carol.email, "Launch")


def test_declined_revoked_and_expired_invitations_cannot_be_accepted(client, make_user, make_org):
    alice, bob, carol, dave = make_user("alice"), make_user("bob"), make_user("carol"), make_user("dave")
    org_id = make_org(alice, bob)

    declined = invite(client, org_id, alice, carol.email)
    assert client.post(f"/api/invitations/{declined['id']}/decline", headers=carol.headers).status_code == 204
    late = client.post(f"/api/invitations/{declined['id']}/accept", headers=carol.headers)
    assert late.status_code == 409 and "declined" in late.json()["detail"]

    revoked = invite(client, org_id, alice, dave.email)
    by_member = client.delete(f"/api/orgs/{org_id}/invitations/{revoked['id']}", headers=bob.headers)
    assert by_member.status_code == 403
    assert (
        client.delete(f"/api/orgs/{org_id}/invitations/{revoked['id']}", headers=alice.headers).status_code
        == 204
    )
    assert client.get("/api/invitations", headers=dave.headers).json() == []
    late = client.post(f"/api/invitations/{revoked['id']}/accept", headers=dave.headers)
    assert late.status_code == 409 and "revoked" in late.json()["detail"]

    expiring = invite(client, org_id, alice, dave.email)
    with SessionLocal() as session:
        past = utcnow() - timedelta(seconds=1)
        session.execute(update(Invitation).where(Invitation.id == expiring["id"]).values(expires_at=past))
        session.commit()
    assert client.get("/api/invitations", headers=dave.headers).json() == []
    late = client.post(f"/api/invitations/{expiring['id']}/accept", headers=dave.headers)
    assert late.status_code == 410 and "expired" in late.json()["detail"]
    renewed = invite(client, org_id, alice, dave.email)  # the expired one makes room for a new one
    assert client.post(f"/api/invitations/{renewed['id']}/accept", headers=dave.headers).status_code == 200

    statuses = {
        i["id"]: i["status"]
        for i in client.get(f"/api/orgs/{org_id}/invitations", headers=alice.headers).json()
    }
    expected = {
        declined["id"]: "declined",
        revoked["id"]: "revoked",
        expiring["id"]: "expired",
        renewed["id"]: "accepted",
    }
    assert {i: statuses[i] for i in expected} == expected and len(statuses) == 5  # with bob's
    assert members(client, org_id, alice) == {alice.email, bob.email, dave.email}


def test_only_a_confirmed_address_sees_accepts_or_declines(client, make_user, make_org):
    """Registering an address one does not own shows nothing of its invitations, nor kills them."""
    alice, eve = make_user("alice"), make_user("eve", verified=False)
    org_id = make_org(alice)
    invitation = invite(client, org_id, alice, eve.email)
    assert client.get("/api/invitations", headers=eve.headers).json() == []
    assert relay.flush(5)  # whatever the invitation notified is published by now
    assert client.get("/api/notifications", headers=eve.headers).json()["items"] == []
    for answer in ("accept", "decline"):
        refused = client.post(f"/api/invitations/{invitation['id']}/{answer}", headers=eve.headers)
        assert refused.status_code == 403 and "confirm your email address" in refused.json()["detail"]
    assert eve.email not in members(client, org_id, alice)
    listed = client.get(f"/api/orgs/{org_id}/invitations", headers=alice.headers).json()
    assert [i["status"] for i in listed] == ["pending"]


def test_removing_a_member_revokes_the_invitations_they_sent(client, make_user, make_org):
    alice, bob, carol, dave = make_user("alice"), make_user("bob"), make_user("carol"), make_user("dave")
    org_id = make_org(alice, bob, role="admin")
    from_bob = invite(client, org_id, bob, carol.email, role="admin")
    from_alice = invite(client, org_id, alice, dave.email)
    assert client.delete(f"/api/orgs/{org_id}/members/{bob.id}", headers=alice.headers).status_code == 204
    late = client.post(f"/api/invitations/{from_bob['id']}/accept", headers=carol.headers)
    assert late.status_code == 409 and "revoked" in late.json()["detail"]
    assert client.get("/api/invitations", headers=carol.headers).json() == []
    assert client.post(f"/api/invitations/{from_alice['id']}/accept", headers=dave.headers).status_code == 200
    assert members(client, org_id, alice) == {alice.email, dave.email}


def test_only_owners_invite_owners(client, make_user, make_org):
    alice, bob = make_user("alice"), make_user("bob")
    org_id = make_org(alice, bob, role="admin")
    refused = client.post(
        f"/api/orgs/{org_id}/members", json={"email": "x@example.com", "role": "owner"}, headers=bob.headers
    )
    assert refused.status_code == 403
    assert invite(client, org_id, alice, "x@example.com", role="owner")["role"] == "owner"
