"""Watching and repairing the outbox: the org admins' API and the operators' CLI."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import delete, update

from src.db import SessionLocal
from src.emails.cli import main as cli
from src.emails.models import EmailQueue, EmailStatus
from src.emails.service import EmailService


def queue_in(org_id, count, status=EmailStatus.pending):
    with SessionLocal() as session:
        ids = [
            EmailService.queue_email(
                session,
                to_email=f"u{n}@example.com",
                subject=f"S{n}",
                body_text="b",
                org_id=org_id,
                wake_worker=False,
            ).id
            for n in range(count)
        ]
        session.execute(update(EmailQueue).where(EmailQueue.id.in_(ids)).values(status=status, attempts=5))
        session.commit()
    return ids


@pytest.fixture
def orgs(make_user, make_org):
    alice, bob, mallory = make_user("alice"), make_user("bob"), make_user("mallory")
    orgs = make_org(alice, bob), make_org(mallory, name="Other")
    with SessionLocal() as session:  # the invitations' emails: out of the way of what is counted here
        session.execute(delete(EmailQueue).where(EmailQueue.dedupe_key.startswith("invitation:")))
        session.commit()
    return *orgs, alice, bob, mallory


def test_admins_watch_retry_and_cancel_their_orgs_emails(client, orgs):
    org_id, other_org, alice, bob, mallory = orgs
    [failed] = queue_in(org_id, 1, EmailStatus.failed)
    [pending] = queue_in(org_id, 1, EmailStatus.pending)
    [foreign] = queue_in(other_org, 1, EmailStatus.failed)

    page = client.get(f"/api/orgs/{org_id}/emails", headers=alice.headers).json()
    assert {e["id"] for e in page["items"]} == {failed, pending}
    assert page["counts"]["failed"] == 1 and page["counts"]["pending"] == 1
    only_failed = client.get(f"/api/orgs/{org_id}/emails?status=failed", headers=alice.headers).json()
    assert [e["id"] for e in only_failed["items"]] == [failed]
    assert client.get(f"/api/orgs/{org_id}/emails", headers=bob.headers).status_code == 403
    assert client.get(f"/api/orgs/{org_id}/emails", headers=mallory.headers).status_code == 404

    retried = client.post(f"/api/orgs/{org_id}/emails/{failed}/retry", headers=alice.headers)
    assert (
        retried.status_code == 200
        and retried.json()["status"] == "pending"
        and retried.json()["attempts"] == 0
    )
    again = client.post(f"/api/orgs/{org_id}/emails/{failed}/retry", headers=alice.headers)
    assert again.status_code == 409
    # A worker left running by earlier tests may already be sending it: the retry woke one.
    assert re.fullmatch(
        "only failed, cancelled or suppressed emails can be retried; this one is (pending|sending|sent)",
        again.json()["detail"],
    )

    cancelled = client.post(f"/api/orgs/{org_id}/emails/{pending}/cancel", headers=alice.headers)
    assert cancelled.json()["status"] == "cancelled"
    assert (
        client.post(f"/api/orgs/{org_id}/emails/{pending}/cancel", headers=alice.headers).status_code == 409
    )
    assert client.post(f"/api/orgs/{org_id}/emails/{foreign}/retry", headers=alice.headers).status_code == 404
    assert (
        client.post(f"/api/orgs/{other_org}/emails/{foreign}/retry", headers=alice.headers).status_code == 404
    )


def test_cli_stats_list_retry_cancel(db, orgs, capsys):
    org_id, *_ = orgs
    failed = queue_in(org_id, 2, EmailStatus.failed)
    [pending] = queue_in(org_id, 1, EmailStatus.pending)

    assert cli(["stats"]) == 0
    assert "failed     2" in capsys.readouterr().out
    assert cli(["list", "--status", "failed"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2

    assert cli(["retry", str(failed[0]), "999999"]) == 1
    out, err = capsys.readouterr()
    assert f"retried 1 email(s): {failed[0]}" in out and "not retried (no such email, or not failed" in err
    assert cli(["retry", "--all-failed"]) == 0
    assert f"retried 1 email(s): {failed[1]}" in capsys.readouterr().out
    assert cli(["list", "--status", "failed"]) == 0
    assert capsys.readouterr().out == "no emails match\n"
    assert cli(["cancel", str(pending)]) == 0
    assert cli(["cancel", str(pending)]) == 1
    with pytest.raises(SystemExit) as usage:
        cli(["retry"])
    assert usage.value.code == 2
    with pytest.raises(SystemExit):
        cli(["list", "--status", "lost"])


def test_cli_runs_as_a_module(db, database_url):
    result = subprocess.run(
        [sys.executable, "-m", "src.emails.cli", "stats"],
        capture_output=True, text=True, env={"DATABASE_URL": database_url}, timeout=60,
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith("pending")
