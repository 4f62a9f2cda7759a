def test_create_and_list_orgs(client, make_user):
    alice, bob = make_user("alice"), make_user("bob")
    created = client.post("/api/orgs", json={"name": "Acme"}, headers=alice.headers)
    assert created.status_code == 201
    assert created.json()["role"] == "owner"
    client.post("/api/orgs", json={"name": "Other"}, headers=bob.headers)

    listed = client.get("/api/orgs", headers=alice.headers).json()
    assert [org["name"] for org in listed] == ["Acme"]


def test_owner_adds_members_and_members_cannot(client, make_user, make_org):
    alice, bob, carol = make_user("alice"), make_user("bob"), make_user("carol")
    org_id = make_org(alice, bob)

    members = client.get(f"/api/orgs/{org_id}/members", headers=bob.headers)
    assert members.status_code == 200
    assert {(m["user"]["email"], m["role"]) for m in members.json()} == {
        (alice.email, "owner"),
        (bob.email, "member"),
    }

    by_member = client.post(
        f"/api/orgs/{org_id}/members", json={"email": carol.email, "role": "member"}, headers=bob.headers
    )
    assert by_member.status_code == 403
    assert "owner or admin" in by_member.json()["detail"]


def test_admin_can_add_members_but_not_owners(client, make_user, make_org):
    alice, bob, carol = make_user("alice"), make_user("bob"), make_user("carol")
    org_id = make_org(alice, bob, role="admin")
    as_owner = client.post(
        f"/api/orgs/{org_id}/members", json={"email": carol.email, "role": "owner"}, headers=bob.headers
    )
    assert as_owner.status_code == 403
    as_member = client.post(
        f"/api/orgs/{org_id}/members", json={"email": carol.email, "role": "member"}, headers=bob.headers
    )
    assert as_member.status_code == 202


def test_add_member_errors(client, make_user, make_org):
    alice, bob = make_user("alice"), make_user("bob")
    org_id = make_org(alice, bob)
    member = client.post(f"/api/orgs/{org_id}/members", json={"email": bob.email}, headers=alice.headers)
    assert member.status_code == 409 and "already belongs to a member" in member.json()["detail"]
    ghost = {"email": "ghost@example.com"}
    assert client.post(f"/api/orgs/{org_id}/members", json=ghost, headers=alice.headers).status_code == 202
    twice = client.post(f"/api/orgs/{org_id}/members", json=ghost, headers=alice.headers)
    assert twice.status_code == 409 and "already pending" in twice.json()["detail"]
    bad_role = client.post(
        f"/api/orgs/{org_id}/members", json={"email": bob.email, "role": "king"}, headers=alice.headers
    )
    assert bad_role.status_code == 422


def test_other_orgs_are_invisible(client, make_user, make_org):
    alice, mallory = make_user("alice"), make_user("mallory")
    org_id = make_org(alice)
    make_org(mallory, name="Evil")
    for path in (f"/api/orgs/{org_id}", f"/api/orgs/{org_id}/members", f"/api/orgs/{org_id}/tasks"):
        response = client.get(path, headers=mallory.headers)
        assert response.status_code == 404, path
        assert response.json() == {"detail": "organization not found"}
    joined = client.post(
        f"/api/orgs/{org_id}/members", json={"email": mallory.email}, headers=mallory.headers
    )
    assert joined.status_code == 404


def test_remove_member_keeps_an_owner(client, make_user, make_org):
    alice, bob = make_user("alice"), make_user("bob")
    org_id = make_org(alice, bob)
    last_owner = client.delete(f"/api/orgs/{org_id}/members/{alice.id}", headers=alice.headers)
    assert last_owner.status_code == 409
    removed = client.delete(f"/api/orgs/{org_id}/members/{bob.id}", headers=alice.headers)
    assert removed.status_code == 204
    assert client.get(f"/api/orgs/{org_id}", headers=bob.headers).status_code == 404
