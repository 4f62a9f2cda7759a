"""The SendGrid backend against a local stand-in that checks its documented v3 Mail Send wire format
(POST /v3/mail/send, bearer API key, JSON personalizations/from/subject/content, 202 on success)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from sqlalchemy import select

from src.db import SessionLocal
from src.emails import delivery
from src.emails.models import EmailAttempt, EmailQueue, EmailStatus
from src.emails.service import EmailService


class FakeSendGrid(BaseHTTPRequestHandler):
    requests: ClassVar[list[dict]] = []
    replies: ClassVar[list[tuple[int, dict]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeSendGrid.requests.append({"path": self.path, "auth": self.headers["Authorization"], "body": body})
        status, reply = FakeSendGrid.replies.pop(0) if FakeSendGrid.replies else (202, None)
        payload = json.dumps(reply).encode() if reply else b""
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def sendgrid(db, monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeSendGrid)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    FakeSendGrid.requests, FakeSendGrid.replies = [], []
    monkeypatch.setattr(delivery.settings, "email_backend", "sendgrid")
    monkeypatch.setattr(delivery.settings, "sendgrid_api_key", "SG.test-key")
    monkeypatch.setattr(
        delivery.settings, "sendgrid_api_url", f"http://127.0.0.1:{server.server_port}/v3/mail/send"
    )
    yield FakeSendGrid
    server.shutdown()


def queue_one():
    with SessionLocal() as session:
        email = EmailService.queue_email(
            session, to_email="zoe@example.com", to_name="Zoë", subject="Größe ✓",
            body_text="Hello Zoë", body_html="<p>Hello Zoë</p>", wake_worker=False,
        )  # fmt: skip
        session.commit()
    return email


def outcome(email_id):
    with SessionLocal() as session:
        email = session.get_one(EmailQueue, email_id)
        codes = list(session.scalars(select(EmailAttempt.smtp_code).where(EmailAttempt.email_id == email_id)))
        return email.status, email.last_error, codes


def test_sends_the_documented_request(sendgrid):
    email = queue_one()
    assert delivery.deliver().sent == 1
    [request] = sendgrid.requests
    assert request["path"] == "/v3/mail/send" and request["auth"] == "Bearer SG.test-key"
    assert request["body"] == {
        "personalizations": [{"to": [{"email": "zoe@example.com", "name": "Zoë"}]}],
        "from": {"email": "noreply@herald.local", "name": "Herald"},
        "subject": "Größe ✓",
        "content": [
            {"type": "text/plain", "value": "Hello Zoë"},
            {"type": "text/html", "value": "<p>Hello Zoë</p>"},
        ],
        "headers": {"Message-ID": email.message_id},
    }
    assert outcome(email.id) == (EmailStatus.sent, None, [250])


def test_validation_error_fails_at_once_with_sendgrids_reason(sendgrid):
    sendgrid.replies.append(
        (400, {"errors": [{"message": "Does not contain a valid address.", "field": "from.email"}]})
    )
    email = queue_one()
    assert delivery.deliver().sent == 0
    status, last_error, codes = outcome(email.id)
    assert status == EmailStatus.failed and codes == [400]
    assert last_error == "SendGrid answered 400: from.email: Does not contain a valid address."


@pytest.mark.parametrize("status_code", [429, 401, 503])
def test_rate_limits_bad_keys_and_outages_are_retried(sendgrid, status_code):
    sendgrid.replies.append((status_code, {"errors": [{"message": "try later", "field": None}]}))
    email = queue_one()
    delivery.deliver()
    status, last_error, codes = outcome(email.id)
    assert (
        status == EmailStatus.pending and codes == [status_code] and f"answered {status_code}" in last_error
    )
