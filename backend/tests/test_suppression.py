"""Suppression: an address refused for good, or reported by SendGrid's signed Event Webhook, gets no
more email until it is lifted. Real worker, Redis, SMTP sink, on both databases."""

import base64
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import ValidationError
from sqlalchemy import delete, select, update

from src.config import Settings, settings
from src.db import SessionLocal
from src.emails import suppressions
from src.emails.backends import address_rejected
from src.emails.cli import main as cli
from src.emails.delivery import deliver
from src.emails.models import EmailQueue, EmailStatus, Suppression
from src.emails.service import EmailService
from tests.test_emails import attempts_of, kick_processor, wait_until

GONE = "gone@example.com"


def queue_to(*addresses, org_id=None, publish=True):
    with SessionLocal() as session:
        ids = [
            EmailService.queue_email(
                session, to_email=address, subject=f"To {address}", body_text="b", org_id=org_id,
                wake_worker=publish,
            ).id
            for address in addresses
        ]  # fmt: skip
        session.commit()
    return ids


def email(email_id):
    with SessionLocal() as session:
        return session.get_one(EmailQueue, email_id)


def suppressed():
    with SessionLocal() as session:
        return {s.email: s.reason for s in session.scalars(select(Suppression))}


def suppress(*addresses, reason="bounce"):
    with SessionLocal() as session:
        suppressions.suppress(session, [suppressions.NewSuppression(a, reason, "test") for a in addresses])
        session.commit()


def status_becomes(email_id, status):
    wait_until(lambda: email(email_id).status == status, message=f"email {email_id} {status.value}")


# --- SMTP: a lasting refusal of the recipient suppresses it ----------------------------------------


def test_a_550_on_rcpt_suppresses_and_the_next_email_is_suppressed_not_sent(worker, sink):
    sink.rcpt_replies.append("550 5.1.1 <gone@example.com>: no such user")
    [first] = queue_to(GONE)
    status_becomes(first, EmailStatus.failed)
    assert attempts_of(first) == [("permanent", 550)]
    assert suppressed() == {GONE: "rejected"}

    # Another address is unaffected; the suppressed one gets nothing, not even a RCPT TO.
    second, other = queue_to("Gone@Example.com", "here@example.com")
    status_becomes(second, EmailStatus.suppressed)
    status_becomes(other, EmailStatus.sent)
    assert [m.rcpt_tos for m in sink.wait_for(1)] == [["here@example.com"]]
    assert attempts_of(second) == [("suppressed", None)]
    row = email(second)
    assert row.sent_at is None and row.claim_token is None
    assert "suppressed" in row.last_error and "550 5.1.1" in row.last_error
    kick_processor()  # final: the processor does not take it up again
    time.sleep(1.0)
    assert email(second).status == EmailStatus.suppressed and attempts_of(second) == [("suppressed", None)]
    assert len(sink.messages) == 1


@pytest.mark.parametrize(
    "reply",
    [
        "550 5.7.1 Relaying denied",  # our server's problem, not the address's
        "554 5.7.1 Client host rejected: blocked using a blocklist",
        "552 5.2.2 Mailbox full",
        "450 4.2.1 Mailbox busy, try later",
        "421 4.7.0 Too many connections, closing",
    ],
)
def test_policy_full_mailbox_and_temporary_refusals_do_not_suppress(worker, sink, reply):
    sink.rcpt_replies.append(reply)
    [email_id] = queue_to(GONE)
    code = int(reply[:3])
    if code >= 500:
        status_becomes(email_id, EmailStatus.failed)
        assert attempts_of(email_id) == [("permanent", code)]
    else:  # retried as before, then sent
        wait_until(lambda: attempts_of(email_id), message="the first attempt")
        time.sleep(0.6)  # past its backoff (at most 0.5 s for the test worker)
        kick_processor()  # once: no processor run is left over for the next test
        status_becomes(email_id, EmailStatus.sent)
        assert attempts_of(email_id) == [("transient", code), ("sent", 250)]
    assert suppressed() == {}


def test_a_refusal_after_data_does_not_suppress(worker, sink):
    """550 to DATA may be about the content (spam filters): the address is not blamed."""
    sink.replies.append("550 5.7.1 Message rejected as spam")
    [email_id] = queue_to(GONE)
    status_becomes(email_id, EmailStatus.failed)
    assert suppressed() == {}


def test_which_rcpt_refusals_mean_the_address_is_gone():
    assert address_rejected(550, "5.1.1 no such user")
    assert address_rejected(550, "5.1.10 null MX")
    assert address_rejected(550, "5.2.1 mailbox disabled")
    assert address_rejected(553, "mailbox name not allowed")
    assert address_rejected(550, "Requested action not taken: mailbox unavailable")
    assert not address_rejected(550, "5.7.1 relaying denied")
    assert not address_rejected(552, "5.2.2 mailbox full")
    assert not address_rejected(554, "transaction failed")
    assert not address_rejected(450, "4.1.1 mailbox busy")


def test_later_emails_of_the_same_batch_are_suppressed_at_once(delivery_to_sink, db):
    """In-process delivery of one claim: after the 550, the rest to that address is not tried."""
    sink = delivery_to_sink
    sink.rcpt_replies.append("550 5.1.1 no such user")
    first, second, other = queue_to(GONE, GONE, "here@example.com", publish=False)
    assert deliver([first, second, other], fill=False).claimed == 3
    assert [email(i).status for i in (first, second, other)] == [
        EmailStatus.failed, EmailStatus.suppressed, EmailStatus.sent,
    ]  # fmt: skip
    assert [m.rcpt_tos for m in sink.messages] == [["here@example.com"]]
    assert not sink.rcpt_replies


def test_an_address_suppressed_after_queueing_gets_nothing(worker, sink):
    [email_id] = queue_to(GONE, publish=False)
    suppress(GONE, reason="spamreport")
    kick_processor()
    status_becomes(email_id, EmailStatus.suppressed)
    assert "spamreport" in email(email_id).last_error and sink.messages == []


# --- lifting: the CLI and the API --------------------------------------------------------------------


def test_lifting_with_the_cli_lets_the_next_email_out(worker, sink, capsys):
    suppress(GONE)
    [before] = queue_to(GONE)
    status_becomes(before, EmailStatus.suppressed)

    assert cli(["suppressions"]) == 0
    assert f"{GONE}  bounce" in capsys.readouterr().out
    assert cli(["lift", "GONE@example.com", "never@example.com"]) == 1
    out, err = capsys.readouterr()
    assert (
        f"lifted 1 suppression(s): {GONE}" in out and "not lifted (not suppressed): never@example.com" in err
    )
    assert suppressed() == {}
    assert cli(["suppressions"]) == 0 and capsys.readouterr().out == "no address is suppressed\n"

    [after] = queue_to(GONE)
    status_becomes(after, EmailStatus.sent)
    assert [m.rcpt_tos for m in sink.wait_for(1)] == [[GONE]]
    assert email(before).status == EmailStatus.suppressed  # stays so until retried

    assert cli(["retry", str(before)]) == 0  # the explicit retry of a suppressed email
    status_becomes(before, EmailStatus.sent)
    with pytest.raises(SystemExit) as usage:
        cli(["lift"])
    assert usage.value.code == 2
    with pytest.raises(SystemExit):
        cli(["suppressions", "--limit", "0"])


@pytest.fixture
def orgs(make_user, make_org):
    alice, bob, mallory = make_user("alice"), make_user("bob"), make_user("mallory")
    acme, other = make_org(alice, bob), make_org(mallory, name="Other")
    with SessionLocal() as session:  # the invitations' emails: out of the way
        session.execute(delete(EmailQueue))
        session.commit()
    return acme, other, alice, bob, mallory


def test_org_admins_see_and_lift_only_their_members(client, orgs, worker, sink):
    acme, other, alice, bob, mallory = orgs
    suppress(bob.email, mallory.email, "customer@example.com", "nobody@example.com")
    # Mailing an address does not bring its suppression into view: an invitation mails any address.
    invitation = {"email": "nobody@example.com"}
    invited = client.post(f"/api/orgs/{acme}/members", json=invitation, headers=alice.headers)
    assert invited.status_code == 202
    [queued_to_customer] = queue_to("customer@example.com", org_id=acme, publish=False)
    with SessionLocal() as session:
        session.execute(update(EmailQueue).where(EmailQueue.id == queued_to_customer).values(status="sent"))
        session.commit()

    listed = client.get(f"/api/orgs/{acme}/suppressions", headers=alice.headers)
    assert listed.status_code == 200
    items = {s["email"]: s for s in listed.json()["items"]}
    assert set(items) == {bob.email}
    assert items[bob.email]["reason"] == "bounce" and items[bob.email]["detail"] == "test"
    theirs = client.get(f"/api/orgs/{other}/suppressions", headers=mallory.headers).json()["items"]
    assert [s["email"] for s in theirs] == [mallory.email]

    # A member who is no admin, and another organization's owner, can neither see nor lift.
    assert client.get(f"/api/orgs/{acme}/suppressions", headers=bob.headers).status_code == 403
    assert client.get(f"/api/orgs/{acme}/suppressions", headers=mallory.headers).status_code == 404
    bobs = items[bob.email]["id"]
    for path, who in ((f"/api/orgs/{acme}/suppressions/{bobs}", mallory),
                      (f"/api/orgs/{other}/suppressions/{bobs}", mallory),
                      (f"/api/orgs/{acme}/suppressions/{bobs}", bob)):  # fmt: skip
        refused = client.delete(path, headers=who.headers)
        assert refused.status_code in (403, 404) and refused.json()["detail"]
    with SessionLocal() as session:
        nobodys = session.scalar(select(Suppression.id).where(Suppression.email == "nobody@example.com"))
    hidden = client.delete(f"/api/orgs/{acme}/suppressions/{nobodys}", headers=alice.headers)
    assert hidden.status_code == 404 and hidden.json() == {"detail": "suppression not found"}
    assert bob.email in suppressed()

    lifted = client.delete(f"/api/orgs/{acme}/suppressions/{bobs}", headers=alice.headers)
    assert lifted.status_code == 204
    assert bob.email not in suppressed() and len(suppressed()) == 3
    assert client.delete(f"/api/orgs/{acme}/suppressions/{bobs}", headers=alice.headers).status_code == 404
    [email_id] = queue_to(bob.email, org_id=acme)
    status_becomes(email_id, EmailStatus.sent)

    # The outbox shows suppressed emails, filters and counts them, and retries one on request.
    [held] = queue_to("customer@example.com", org_id=acme)
    status_becomes(held, EmailStatus.suppressed)
    page = client.get(f"/api/orgs/{acme}/emails?status=suppressed", headers=alice.headers).json()
    # The invitation to nobody@example.com too: its admins see it held, though not the suppression.
    assert [e["to_email"] for e in page["items"]] == ["customer@example.com", "nobody@example.com"]
    assert page["items"][0]["id"] == held and page["counts"]["suppressed"] == 2
    retried = client.post(f"/api/orgs/{acme}/emails/{held}/retry", headers=alice.headers)
    assert retried.status_code == 200 and retried.json()["attempts"] == 0
    status_becomes(held, EmailStatus.suppressed)  # still suppressed: it ends so again


@pytest.mark.parametrize(
    "path",
    ["/api/orgs/{acme}/suppressions/0", "/api/orgs/{acme}/suppressions/x",
     "/api/orgs/{acme}/suppressions?limit=0", "/api/orgs/{acme}/suppressions?offset=-1",
     "/api/orgs/{acme}/suppressions?limit=many"],
)  # fmt: skip
def test_bad_input_is_a_json_422(client, orgs, path):
    acme, _other, alice, *_ = orgs
    url = path.format(acme=acme)
    method = client.delete if url.split("?")[0].endswith(("/0", "/x")) else client.get
    response = method(url, headers=alice.headers)
    assert response.status_code == 422 and response.json()["detail"]


def test_suppressions_need_a_login(client, orgs):
    acme, *_ = orgs
    assert client.get(f"/api/orgs/{acme}/suppressions").status_code == 401


# --- SendGrid's signed Event Webhook -----------------------------------------------------------------

WEBHOOK = "/api/webhooks/sendgrid"


class SendGridSigner:
    """What SendGrid does: an ECDSA P-256 key pair, the public half shown as base64 DER."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public_key = base64.b64encode(der).decode()

    def headers(self, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        signature = self.key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return {
            "Content-Type": "application/json",
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
        }


@pytest.fixture
def sendgrid(monkeypatch):
    signer = SendGridSigner()
    monkeypatch.setattr(settings, "sendgrid_webhook_public_key", signer.public_key)
    return signer


def events(*items):
    base = {"timestamp": 1700000000, "sg_event_id": "e", "sg_message_id": "m.filter"}
    return json.dumps([{**base, **item} for item in items], separators=(",", ":")).encode()


BATCH = events(
    {"email": "bounced@example.com", "event": "bounce", "type": "bounce", "reason": "550 5.1.1 unknown user"},
    {"email": "dropped@example.com", "event": "dropped", "reason": "Bounced Address"},
    {"email": "angry@example.com", "event": "spamreport"},
    {"email": "later@example.com", "event": "bounce", "type": "blocked", "reason": "421 try later"},
    {"email": "fine@example.com", "event": "delivered", "response": "250 OK"},
    {"email": "not an address", "event": "bounce"},
    {"event": "dropped"},
)


def test_a_signed_batch_suppresses_bounces_drops_and_spam_reports(client, sendgrid, worker, sink):
    response = client.post(WEBHOOK, content=BATCH, headers=sendgrid.headers(BATCH))
    assert response.status_code == 200, response.text
    assert response.json() == {"events": 7, "suppressed": 3}
    assert suppressed() == {
        "bounced@example.com": "bounce", "dropped@example.com": "dropped", "angry@example.com": "spamreport",
    }  # fmt: skip
    # SendGrid retries a batch it is not sure arrived: the same batch again changes nothing.
    again = client.post(WEBHOOK, content=BATCH, headers=sendgrid.headers(BATCH))
    assert again.json() == {"events": 7, "suppressed": 0} and len(suppressed()) == 3

    held, sent = queue_to("bounced@example.com", "later@example.com")
    status_becomes(held, EmailStatus.suppressed)
    status_becomes(sent, EmailStatus.sent)
    assert "550 5.1.1 unknown user" in email(held).last_error
    assert [m.rcpt_tos for m in sink.wait_for(1)] == [["later@example.com"]]


def test_the_same_batch_delivered_at_once_suppresses_each_address_once(client, sendgrid):
    """SendGrid may deliver a batch twice, concurrently: no error, no duplicate, nothing lost.
    (Fewer requests than API_THREADS: in-process, the admission limit's semaphore stays bound to the
    first test client's event loop, and it would be waited on from this one's.)"""
    start = threading.Barrier(6)

    def post(_: int) -> tuple[int, int]:
        start.wait()
        response = client.post(WEBHOOK, content=BATCH, headers=sendgrid.headers(BATCH))
        return response.status_code, response.json().get("suppressed", -1)

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(post, range(6)))
    assert {status for status, _ in answers} == {200}
    assert sum(new for _, new in answers) == 3 and len(suppressed()) == 3


def test_bad_missing_or_stale_signatures_are_403_and_change_nothing(client, sendgrid):
    other = SendGridSigner()
    signed = sendgrid.headers(BATCH)
    tampered = BATCH.replace(b"angry@", b"happy@")
    stale = sendgrid.headers(
        BATCH, timestamp=int(time.time()) - settings.sendgrid_webhook_max_age_seconds - 5
    )
    bad = [
        (BATCH, other.headers(BATCH)),  # another key
        (tampered, signed),  # the body changed after signing
        (BATCH, {**signed, "X-Twilio-Email-Event-Webhook-Timestamp": str(int(time.time()) + 1)}),
        (BATCH, {**signed, "X-Twilio-Email-Event-Webhook-Signature": "not base64!"}),
        (BATCH, {**signed, "X-Twilio-Email-Event-Webhook-Timestamp": "-5"}),
        (BATCH, {"Content-Type": "application/json"}),  # unsigned
        (BATCH, stale),  # a replay, signed long ago
    ]
    for body, headers in bad:
        response = client.post(WEBHOOK, content=body, headers=headers)
        assert response.status_code == 403, (headers, response.text)
        assert response.headers["content-type"] == "application/json" and response.json()["detail"]
    assert "too old" in response.json()["detail"]
    assert suppressed() == {}


@pytest.mark.parametrize("body", [b"", b"not json", b'{"event": "bounce"}', b"[1, 2]", b"\xff\xfe"])
def test_a_signed_body_that_is_no_event_batch_is_a_422(client, sendgrid, body):
    response = client.post(WEBHOOK, content=body, headers=sendgrid.headers(body))
    assert response.status_code == 422 and "JSON array" in response.json()["detail"]
    assert suppressed() == {}


def test_the_webhook_is_off_without_a_key(client, monkeypatch):
    monkeypatch.setattr(settings, "sendgrid_webhook_public_key", "")
    response = client.post(WEBHOOK, content=BATCH, headers=SendGridSigner().headers(BATCH))
    assert response.status_code == 404
    assert "SENDGRID_WEBHOOK_PUBLIC_KEY" in response.json()["detail"]
    assert suppressed() == {}


def test_a_key_that_cannot_verify_stops_start_up():
    ed25519 = "MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE="  # a key, but not P-256
    for value in ("not base64!", base64.b64encode(b"not DER").decode(), ed25519):
        with pytest.raises(ValidationError, match="sendgrid_webhook_public_key"):
            Settings(sendgrid_webhook_public_key=value)
    pasted = f" {SendGridSigner().public_key}\n"  # as copied from SendGrid's page
    assert Settings(sendgrid_webhook_public_key=pasted).sendgrid_webhook_public_key == pasted.strip()
