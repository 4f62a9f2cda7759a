"""Amazon SES: the backend against moto's SES server, started here as a process: a real HTTP endpoint
speaking SESv2's wire protocol, with IAM authentication on, so it checks each request's SigV4
signature against an access key made in it. What that server cannot produce (throttling, 5xx, the
sandbox's refusal) is played by botocore's Stubber, in the SDK's documented error shape. SES's
bounce and complaint notifications (SNS): `test_ses_notifications.py`."""

import contextlib
import json
import os
import subprocess
import sys
import time
from email import message_from_string, policy

import boto3
import httpx
import pytest
from botocore.stub import Stubber
from sqlalchemy import select

from src.config import settings
from src.db import SessionLocal
from src.devserver.redis_server import free_port
from src.emails import delivery
from src.emails.backends import DeliveryError, get_backend
from src.emails.models import EmailAttempt, EmailQueue, EmailStatus
from src.emails.rendering import render
from src.emails.service import EmailService
from src.emails.ses import SesConnection
from src.preferences.catalogue import EventType
from src.preferences.unsubscribe import list_unsubscribe_headers, preferences_url, unsubscribe_url
from tests.conftest import RUN_DIR

REGION = "eu-west-1"
MESSAGE = b"Subject: x\r\n\r\nx"


# Requests moto serves before it checks signatures: those that make Herald's IAM user and its key.
SETUP_ACTIONS = 3


@pytest.fixture(scope="module")
def moto_server():
    """moto's server, and the access key (id, secret) of an IAM user allowed to use SES."""
    port = free_port()
    log = (RUN_DIR / "moto.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log, stderr=log, env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(SETUP_ACTIONS)},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.get(f"{url}/moto-api/data.json", timeout=1).raise_for_status()
            break
        except httpx.HTTPError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"moto's server did not start; see {RUN_DIR / 'moto.log'}")
            time.sleep(0.1)
    iam = boto3.client("iam", region_name="us-east-1", endpoint_url=url, aws_access_key_id="setup",
                       aws_secret_access_key="setup")  # fmt: skip
    iam.create_user(UserName="herald")
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "ses:*", "Resource": "*"}]}
    iam.put_user_policy(UserName="herald", PolicyName="send", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="herald")["AccessKey"]
    yield url, (key["AccessKeyId"], key["SecretAccessKey"])
    process.terminate()
    process.wait(10)
    log.close()


class MotoSes:
    """The SES account moto's server keeps (for the whole module: a reset would remove the IAM user
    too): verified identities and the raw messages it accepted."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.before = len(self._all_sent())

    def client(self):
        return SesConnection(settings).client

    def verify(self, identity: str) -> None:
        with contextlib.suppress(self.client().exceptions.AlreadyExistsException):
            self.client().create_email_identity(EmailIdentity=identity)

    def sent(self) -> list[dict]:
        """What SES accepted in this test: source, destinations and the raw MIME, as moto recorded them."""
        return self._all_sent()[self.before :]

    def _all_sent(self) -> list[dict]:
        return httpx.get(f"{self.url}/moto-api/data.json").json().get("ses", {}).get("RawMessage", [])


@pytest.fixture
def aws(monkeypatch):
    """EMAIL_BACKEND=ses with test credentials, on SES's own endpoint until a test says otherwise."""
    for name, value in {
        "email_backend": "ses", "aws_region": REGION, "aws_access_key_id": "AKIDHERALDTEST",
        "aws_secret_access_key": "herald-test-secret", "aws_session_token": "", "ses_endpoint_url": "",
        "ses_configuration_set": "",
    }.items():  # fmt: skip
        monkeypatch.setattr(settings, name, value)


@pytest.fixture
def ses(aws, db, moto_server, monkeypatch):
    url, (key_id, secret) = moto_server
    monkeypatch.setattr(settings, "ses_endpoint_url", url)
    monkeypatch.setattr(settings, "aws_access_key_id", key_id)
    monkeypatch.setattr(settings, "aws_secret_access_key", secret)
    account = MotoSes(url)
    account.verify("herald.local")  # SMTP_FROM_EMAIL's domain
    return account


def outcome(email_id: int) -> tuple[EmailStatus, str | None, list[tuple[str, int | None]]]:
    with SessionLocal() as session:
        email = session.get_one(EmailQueue, email_id)
        attempts = session.execute(
            select(EmailAttempt.outcome, EmailAttempt.smtp_code).where(EmailAttempt.email_id == email_id)
        )
        return email.status, email.last_error, [tuple(a) for a in attempts]


def status_change_email() -> EmailQueue:
    """The email Herald queues when Alice moves a task Bob watches to done, queued here without a
    wake-up, so that no worker another test left running sends it before this test does."""
    unsubscribe = unsubscribe_url(2, [EventType.task_status_changed])
    text, html = render(
        "task_status_changed", recipient_name="Bob", actor_name="Alice", task_title="Ship SES",
        old_status="in_review", new_status="done", task_url="http://localhost:8000/tasks/1", org_name="Acme",
        unsubscribe_url=unsubscribe, preferences_url=preferences_url(),
    )  # fmt: skip
    with SessionLocal() as session:
        email = EmailService.queue_email(
            session, to_email="bob@example.com", to_name="Bob", subject="[Acme] Ship SES: in_review → done",
            body_text=text, body_html=html, wake_worker=False, headers=list_unsubscribe_headers(unsubscribe),
        )  # fmt: skip
        session.commit()
    return email


def test_a_status_change_email_goes_out_through_ses_as_composed(ses):
    email = status_change_email()
    assert delivery.deliver(fill=False, email_ids=[email.id]).sent == 1
    assert outcome(email.id) == (EmailStatus.sent, None, [("sent", 250)])
    [message] = ses.sent()
    assert message["source"] == settings.smtp_from_email
    assert "bob@example.com" in message["destinations"]
    # The raw MIME is what the outbox holds, byte for byte: headers such as Message-ID survive.
    assert message["raw_data"] == email.mime
    parsed = message_from_string(message["raw_data"], policy=policy.default)
    assert parsed["Message-ID"] == email.message_id
    assert parsed["To"].addresses[0].addr_spec == "bob@example.com"
    assert "Ship SES" in parsed.get_body(("plain",)).get_content()
    assert parsed["List-Unsubscribe"].startswith("<http://localhost:8000/unsubscribe/")
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_an_unverified_sender_fails_for_good_with_ses_reason(ses, monkeypatch):
    monkeypatch.setattr(settings, "smtp_from_email", "noreply@unverified.example")
    email = status_change_email()
    assert delivery.deliver(fill=False, email_ids=[email.id]).sent == 0
    status, last_error, attempts = outcome(email.id)
    assert status == EmailStatus.failed and attempts == [("permanent", 400)]
    assert last_error.startswith("Amazon SES refused (MessageRejected): ")
    assert "noreply@unverified.example" in last_error
    assert ses.sent() == []


def test_a_wrong_secret_key_is_refused_by_the_signature_check_and_retried(ses, monkeypatch):
    monkeypatch.setattr(settings, "aws_secret_access_key", "not-the-secret")
    with pytest.raises(DeliveryError) as refused:
        SesConnection(settings).send("noreply@herald.local", "bob@example.com", MESSAGE)
    assert not refused.value.permanent and refused.value.code == 403
    assert "SignatureDoesNotMatch" in refused.value.reason  # moto checked SigV4, as SES does
    assert ses.sent() == []


def test_an_unreachable_endpoint_is_retried_on_a_new_connection(aws, monkeypatch):
    monkeypatch.setattr(settings, "ses_endpoint_url", f"http://127.0.0.1:{free_port()}")  # nothing listens
    with pytest.raises(DeliveryError) as refused:
        get_backend(settings).connect().send("noreply@herald.local", "bob@example.com", MESSAGE)
    assert not refused.value.permanent and refused.value.broken
    assert "Amazon SES unreachable" in refused.value.reason


def test_ses_needs_a_region(monkeypatch):
    monkeypatch.setattr(settings, "email_backend", "ses")
    monkeypatch.setattr(settings, "aws_region", "")
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    with pytest.raises(ValueError, match="AWS_REGION"):
        get_backend(settings)


# --- What moto cannot produce: SES's error answers, in botocore's documented shape -------------------


def refused_by(code: str, status: int, message: str, recipient: str = "bob@example.com") -> DeliveryError:
    connection = SesConnection(settings)
    with Stubber(connection.client) as stub:
        stub.add_client_error("send_email", service_error_code=code, service_message=message,
                              http_status_code=status)  # fmt: skip
        with pytest.raises(DeliveryError) as refused:
            connection.send("noreply@herald.local", recipient, MESSAGE)
        stub.assert_no_pending_responses()
    return refused.value


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("TooManyRequestsException", 429),
        ("Throttling", 400),
        ("LimitExceededException", 400),
        ("SendingPausedException", 400),
        ("InternalFailure", 500),
        ("ServiceUnavailable", 503),
    ],
)
def test_throttling_and_outages_are_retried(aws, code, status):
    error = refused_by(code, status, "Maximum sending rate exceeded.")
    assert not error.permanent and error.code == status
    assert error.reason == f"Amazon SES refused ({code}): Maximum sending rate exceeded."


@pytest.mark.parametrize(
    "code", ["MessageRejected", "MailFromDomainNotVerifiedException", "BadRequestException"]
)
def test_rejections_fail_for_good_with_ses_reason(aws, code):
    error = refused_by(code, 400, "Illegal address")
    assert error.permanent and error.code == 400
    assert error.reason == f"Amazon SES refused ({code}): Illegal address"


def test_the_sandbox_says_so(aws):
    said = (
        "Email address is not verified. The following identities failed the check in region "
        "EU-WEST-1: Bob@Example.com"
    )
    error = refused_by("MessageRejected", 400, said)
    assert error.permanent and not error.bad_address  # the address is fine; the account is not
    assert "the account is in the SES sandbox" in error.reason and "request production access" in error.reason
    assert error.reason.endswith(said)


def test_the_configuration_set_travels_with_each_email(aws, monkeypatch):
    """moto accepts and ignores ConfigurationSetName: the request itself is checked, against SESv2's
    documented shape (Stubber validates it)."""
    monkeypatch.setattr(settings, "ses_configuration_set", "herald-events")
    connection = SesConnection(settings)
    with Stubber(connection.client) as stub:
        stub.add_response("send_email", {"MessageId": "0102017a"}, expected_params={
            "FromEmailAddress": "noreply@herald.local", "Destination": {"ToAddresses": ["bob@example.com"]},
            "Content": {"Raw": {"Data": MESSAGE}}, "ConfigurationSetName": "herald-events",
        })  # fmt: skip
        connection.send("noreply@herald.local", "bob@example.com", MESSAGE)
        stub.assert_no_pending_responses()
