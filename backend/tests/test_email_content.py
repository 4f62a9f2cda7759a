"""Validation and message building, without a worker."""

import logging
from email import message_from_bytes, policy

import pytest
from sqlalchemy import func, select, update

from src.db import SessionLocal
from src.emails import claims, delivery, suppressions
from src.emails.models import EmailQueue, EmailStatus
from src.emails.rendering import render
from src.emails.service import EmailDraft, EmailService
from src.errors import Invalid

GOOD = {"to_email": "ada@example.com", "subject": "Hello", "body_text": "Hi"}


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"to_email": "not an address"}, "invalid recipient address"),
        ({"to_email": "ada@example.com\r\nBcc: eve@example.com"}, "invalid recipient address"),
        ({"subject": "Hi\r\nBcc: eve@example.com"}, "subject must not contain CR or LF"),
        ({"to_name": "Ada\nBcc: eve@example.com"}, "recipient name must not contain CR or LF"),
        ({"subject": "   "}, "subject must not be empty"),
        ({"body_text": "x" * 1_000_001}, "the limit is 1000000"),
        ({"body_text": ""}, "plain-text body must not be empty"),
    ],
)
def test_bad_input_is_rejected_and_stores_nothing(db, overrides, error):
    with SessionLocal() as session:
        with pytest.raises(Invalid, match=error):
            EmailService.queue_email(session, **{**GOOD, **overrides})
        session.commit()
        assert session.scalar(select(func.count()).select_from(EmailQueue)) == 0


def test_dedupe_key_queues_once(db):
    with SessionLocal() as session:
        first = EmailService.queue_email(session, **GOOD, dedupe_key="event:1:user:2")
        second = EmailService.queue_email(session, **GOOD, dedupe_key="event:1:user:2")
        session.commit()
        assert first.id == second.id
        assert session.scalar(select(func.count()).select_from(EmailQueue)) == 1


def test_queueing_many_stores_the_new_and_returns_the_already_queued(db):
    """One INSERT for all: each draft gets its email back, in order, whether it was stored now or
    under its dedupe key before."""
    with SessionLocal() as session:
        earlier = EmailService.queue_email(session, **GOOD, dedupe_key="event:1:user:2")
        session.commit()
    drafts = [
        EmailDraft(to_email="bea@example.com", subject="One", body_text="1", dedupe_key="event:1:user:3"),
        EmailDraft(**GOOD, dedupe_key="event:1:user:2"),
        EmailDraft(to_email="cy@example.com", subject="Three", body_text="3"),
    ]
    with SessionLocal() as session:
        queued = EmailService.queue_emails(session, drafts, wake_worker=False)
        session.commit()
        rows = {row.id: row for row in session.scalars(select(EmailQueue))}
    assert queued[1] == earlier
    assert len({email.id for email in queued}) == 3 and len(rows) == 3
    for email, draft in zip(queued, drafts, strict=True):
        row = rows[email.id]
        assert (row.to_email, row.subject, row.message_id) == (
            draft.to_email,
            draft.subject,
            email.message_id,
        )
        assert row.status == EmailStatus.pending and row.attempts == 0
        assert row.created_at == row.next_attempt_at == email.created_at <= row.updated_at


def test_non_ascii_subject_and_name_are_encoded(db):
    with SessionLocal() as session:
        email = EmailService.queue_email(
            session,
            to_email="zoe@example.com",
            to_name="Zoë Ümlaut",
            subject="Größe → ✓ 完成",
            body_text="Grüße",
        )
        session.commit()
    raw = email.mime.encode()
    raw.decode("ascii")  # every header and body line is 7-bit on the wire
    parsed = message_from_bytes(raw, policy=policy.default)
    assert parsed["Subject"] == "Größe → ✓ 完成"
    assert parsed["To"].addresses[0].display_name == "Zoë Ümlaut"
    assert parsed.get_body(("plain",)).get_content().strip() == "Grüße"


@pytest.mark.parametrize(
    "value",
    [
        "Hello",
        "x" * 68,  # "Subject: " + 67, 68 and 69 characters: around compat32's 78
        "x" * 67,
        "x" * 69,
        "word " * 30,
        "tab\there",
        " leading and trailing ",
        "=?utf-8?q?Caf=C3=A9?= and more",
        "Zoë Ångström",
        "<https://herald.example/unsubscribe/abc>, <mailto:unsubscribe@herald.example>",
    ],
)
def test_the_smtp_policy_folds_headers_exactly_as_compat32(value):
    from email.policy import compat32

    from src.emails.mime import _SMTP_COMPAT32

    as_string_writes = compat32.clone(linesep="\r\n", max_line_length=0)  # Message.as_string()'s
    assert _SMTP_COMPAT32.fold("Subject", value) == as_string_writes.fold("Subject", value)


def _composed_by_the_stdlib(message: str, **fields) -> str:
    """The message the `email.mime` classes and their generator write for the same fields and boundary."""
    from email.charset import QP, Charset
    from email.mime.multipart import MIMEMultipart
    from email.mime.text import MIMEText
    from email.policy import compat32
    from email.utils import format_datetime, formataddr

    from src.config import settings
    from src.emails.mime import _header

    utf8_qp = Charset("utf-8")
    utf8_qp.header_encoding = utf8_qp.body_encoding = QP
    boundary = message_from_bytes(message.encode()).get_boundary()
    reference = plain = MIMEText(fields["body_text"], "plain", utf8_qp)
    if fields["body_html"]:
        reference = MIMEMultipart("alternative", boundary=boundary)
        reference.attach(plain)
        reference.attach(MIMEText(fields["body_html"], "html", utf8_qp))
    reference["From"] = formataddr((settings.smtp_from_name, settings.smtp_from_email), charset="utf-8")
    reference["To"] = formataddr((fields["to_name"], fields["to_email"]), charset="utf-8")
    reference["Subject"] = _header(fields["subject"])
    reference["Message-ID"] = fields["message_id"]
    reference["Date"] = format_datetime(fields["date"])
    for name, value in (fields["headers"] or {}).items():
        reference[name] = value
    return reference.as_string(policy=compat32.clone(linesep="\r\n"))


def test_messages_are_byte_for_byte_what_the_email_mime_classes_write():
    """Herald writes the MIME layout around the stdlib's encodings itself: it must not differ by a byte."""
    import random
    from datetime import UTC, datetime

    from src.emails.mime import compose_message

    rng = random.Random(7)
    characters = "ab XY.\t=-<>&\"'é…Å€😀\u2028\x85\x0b\x00\x7f" + "y" * 12  # and line breaks in bodies
    text = lambda most: "".join(rng.choice(characters) for _ in range(rng.randint(0, most)))  # noqa: E731
    for i in range(400):
        fields = {
            "to_email": "ada@example.com",
            "to_name": text(40),
            "subject": text(200) or "S",
            "body_text": text(600).replace("y", "\n", rng.randint(0, 9)).replace("b", "\r", 2),
            "body_html": [None, "", f"<p>{text(300)}</p>\n"][i % 3],
            "message_id": f"<{i}@herald.example>",
            "date": datetime(2026, 11, 30, 12, i % 60, tzinfo=UTC),
            "headers": {"List-Unsubscribe": f"<https://h/u/{'t' * rng.randint(0, 120)}>"} if i % 2 else None,
        }
        message = compose_message(**fields)
        assert message == _composed_by_the_stdlib(message, **fields), fields


def test_a_multipart_boundary_never_occurs_in_its_parts(db):
    body = "--=_0123 =_ and =3D\n" * 3
    with SessionLocal() as session:
        email = EmailService.queue_email(
            session, to_email="b@example.com", subject="S", body_text=body, body_html=f"<p>{body}</p>"
        )
    parsed = message_from_bytes(email.mime.encode(), policy=policy.default)
    boundary = parsed.get_boundary()
    assert boundary.startswith("=_") and email.mime.count(boundary) == 4  # header, two parts, end
    assert parsed.get_body(("plain",)).get_content().replace("\r\n", "\n") == body


def test_templates_autoescape_html_only():
    text, html = render(
        "task_status_changed",
        recipient_name="<b>Ada</b>",
        actor_name="Bob",
        task_title="<script>x</script>",
        old_status="todo",
        new_status="done",
        task_url="http://h/tasks/1",
        org_name="Acme & Co",
        unsubscribe_url="http://h/unsubscribe/t?a=1&b=2",
        preferences_url="http://h/preferences",
    )
    assert 'href="http://h/unsubscribe/t?a=1&amp;b=2"' in html
    assert "&lt;script&gt;" in html and "<script>" not in html and "Acme &amp; Co" in html
    assert "<script>x</script>" in text


def test_console_backend_when_no_smtp_host(db, monkeypatch, caplog):
    monkeypatch.setattr(delivery.settings, "smtp_host", "")
    with SessionLocal() as session:
        EmailService.queue_email(session, **GOOD, wake_worker=False)
        session.commit()
    with caplog.at_level(logging.INFO, logger="herald.emails"):
        assert delivery.deliver().sent == 1
    assert "console email to ada@example.com: Hello" in caplog.text
    with SessionLocal() as session:
        assert session.scalar(select(EmailQueue.status)) == EmailStatus.sent


@pytest.mark.parametrize("suppressed_first", [False, True])
def test_unreachable_smtp_counts_one_attempt_and_releases_the_rest(db, monkeypatch, suppressed_first):
    """An email not sent because its address is suppressed says nothing of the server: the first
    email that tries it still stands for the whole batch."""
    monkeypatch.setattr(delivery.settings, "smtp_host", "127.0.0.1")
    monkeypatch.setattr(delivery.settings, "smtp_port", 1)  # nothing listens there
    addresses = ["gone@example.com"] if suppressed_first else []
    with SessionLocal() as session:
        if suppressed_first:
            suppressions.suppress(session, [suppressions.NewSuppression(addresses[0], "bounce", "test")])
        for n, address in enumerate([*addresses, *["ada@example.com"] * 3]):
            draft = {**GOOD, "to_email": address, "subject": f"Hello {n}"}
            EmailService.queue_email(session, **draft, wake_worker=False)
        session.commit()
    assert delivery.process_queue(time_budget=5) == 0  # one try, not one per email
    with SessionLocal() as session:
        emails = list(session.scalars(select(EmailQueue).order_by(EmailQueue.id)))
    if suppressed_first:
        assert emails[0].status == EmailStatus.suppressed
        emails = emails[1:]
    assert [e.attempts for e in emails] == [1, 0, 0]
    assert all(e.status == EmailStatus.pending for e in emails)
    assert "SMTP connect to 127.0.0.1:1 failed" in emails[0].last_error


def test_long_names_and_international_domains_do_not_break_a_status_change(client, make_user, make_org):
    from sqlalchemy import update

    from src.auth.models import User
    from src.notifications.models import Notification

    alice, bob = make_user("alice"), make_user("bob")
    org_id = make_org(alice, bob)
    with SessionLocal() as session:
        session.execute(update(User).where(User.id == alice.id).values(name="A" * 200))
        session.execute(update(User).where(User.id == bob.id).values(email="bob@exämple.com"))
        session.commit()
    task = client.post(
        f"/api/orgs/{org_id}/tasks", json={"title": "T" * 300, "watcher_ids": [bob.id]}, headers=alice.headers
    ).json()
    response = client.patch(f"/api/tasks/{task['id']}", json={"status": "done"}, headers=alice.headers)
    assert response.status_code == 200
    with SessionLocal() as session:
        status_email = select(EmailQueue.to_email).where(EmailQueue.dedupe_key.startswith("task-event:"))
        assert session.scalar(status_email) == "bob@xn--exmple-cua.com"
        status_note = select(Notification.title).where(Notification.type == "task.status_changed")
        assert len(session.scalar(status_note)) == 300


@pytest.fixture
def to_sink(db, delivery_to_sink):
    with SessionLocal() as session:
        for n in range(3):
            EmailService.queue_email(session, **{**GOOD, "subject": f"Hello {n}"}, wake_worker=False)
        session.commit()
    return delivery_to_sink


def statuses() -> list[tuple[EmailStatus, int]]:
    with SessionLocal() as session:
        return [(e.status, e.attempts) for e in session.scalars(select(EmailQueue).order_by(EmailQueue.id))]


def test_a_421_to_rcpt_reconnects_for_the_next_email(to_sink):
    to_sink.rcpt_replies.extend(["250 OK", "421 4.7.0 closing connection"])
    assert delivery.deliver().sent == 2
    assert statuses() == [(EmailStatus.sent, 1), (EmailStatus.pending, 1), (EmailStatus.sent, 1)]
    assert len(to_sink.messages) == 2


def test_a_long_batch_renews_its_lease(to_sink, monkeypatch):
    monkeypatch.setattr(delivery.settings, "email_lease_seconds", 0)  # due for renewal before every send
    renewals = []

    def renew_and_note(session, claim, emails):
        renewed = claims.renew(session, claim, emails)
        renewals.append(([e.id for e in emails], renewed))
        return renewed

    monkeypatch.setattr(delivery, "renew", renew_and_note)
    assert delivery.deliver().sent == 3
    assert statuses() == [(EmailStatus.sent, 1)] * 3
    # Each email's lease renewed before it was sent, for it and those after it, and each renewal held.
    unsent = [ids for ids, _ in renewals]
    assert all(renewed for _, renewed in renewals) and [len(ids) for ids in unsent][:1] == [3]
    with SessionLocal() as session:
        assert {ids[0] for ids in unsent} == set(session.scalars(select(EmailQueue.id)))


def test_a_batch_stops_where_its_claim_was_lost(to_sink, monkeypatch):
    monkeypatch.setattr(delivery.settings, "email_lease_seconds", 0)
    with SessionLocal() as session:
        batch = claims.claim(session, 10)
        # Another worker reclaimed two of them after the lease ran out.
        session.execute(
            update(EmailQueue).where(EmailQueue.id != batch.emails[0].id).values(claim_token="another")
        )
        session.commit()
        assert delivery.send_claimed(session, batch).sent == 0
    assert statuses() == [(EmailStatus.pending, 0), (EmailStatus.sending, 1), (EmailStatus.sending, 1)]
    assert to_sink.messages == []


def test_a_script_importing_only_the_email_service_can_queue(tmp_path):
    """The setup guide's `EmailService.queue_email()`, from a script that imports nothing else."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from src.devserver.databases import migrate

    url = f"sqlite:///{tmp_path / 'script.db'}"
    migrate(url)
    script = (
        "from src.db import SessionLocal\n"
        "from src.emails.service import EmailService\n"
        "with SessionLocal() as session:\n"
        "    EmailService.queue_email(session, to_email='a@example.com', subject='Hi', body_text='b',\n"
        "                             wake_worker=False)\n"
        "    session.commit()\n"
    )
    backend = Path(__file__).resolve().parents[1]
    subprocess.run(
        [sys.executable, "-c", script], cwd=backend, env={**os.environ, "DATABASE_URL": url}, check=True
    )
    import sqlite3

    with sqlite3.connect(tmp_path / "script.db") as conn:
        assert conn.execute("SELECT status FROM email_queue").fetchall() == [("pending",)]


FORGED = "\r\nBcc: eve@example.com\nCc: x\u202e\u2066\u200b\u200d\u2060\ufeff\u200e\u061c"


def test_user_text_reaches_a_status_email_on_its_own_line_and_visible(
    client, make_user, make_org, delivery_to_sink
):
    """A status change with forging names and title, sent through the real SMTP sink."""
    from src.auth.models import User
    from src.orgs.models import Organization

    alice, bob = make_user("alice"), make_user("bob")
    org_id = make_org(alice, bob)
    with SessionLocal() as session:
        session.execute(update(User).where(User.id == alice.id).values(name=f"Alice{FORGED}"))
        session.execute(update(User).where(User.id == bob.id).values(name=f"Bob{FORGED}"))
        session.execute(update(Organization).where(Organization.id == org_id).values(name=f"Acme{FORGED}"))
        session.commit()
    task = client.post(
        f"/api/orgs/{org_id}/tasks",
        json={"title": f"Pay\ninvoice{FORGED}fdp.exe", "watcher_ids": [bob.id]},
        headers=alice.headers,
    ).json()
    assert client.patch(f"/api/tasks/{task['id']}", json={"status": "done"}, headers=alice.headers).is_success
    delivery.deliver()  # or the suite's worker, if one runs: it mails the same sink
    delivery_to_sink.wait_for(2)  # the email inviting Bob, and the status change's
    [message] = [m.message for m in delivery_to_sink.messages if "todo → done" in m.message["Subject"]]
    plain = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    forged = "Bcc: eve@example.com Cc: x"
    assert message["Subject"] == f"[Acme {forged}] Pay invoice {forged}fdp.exe: todo → done"
    assert message["To"].addresses[0].display_name == f"Bob {forged}"
    assert message["Bcc"] is None and message["Cc"] is None
    assert f"Hi Bob {forged}," in plain
    assert f'Alice {forged} moved "Pay invoice {forged}fdp.exe" from todo to done.' in plain
    assert not [line for line in plain.splitlines() if line.startswith(("Bcc", "Cc", "invoice"))]
    invisible = "\u202e\u2066\u200b\u200d\u2060\ufeff\u200e\u061c"
    for text in (message["Subject"], message["To"], plain, html):
        assert not set(invisible) & set(text)
