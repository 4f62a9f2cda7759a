"""SES's bounce and complaint notifications, as SNS delivers them to `POST /api/webhooks/ses`: signed
here exactly as SNS signs, with a locally made RSA key whose certificate a local HTTPS server serves
(as SNS serves its own), on both databases."""

import base64
import datetime
import ipaddress
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from src.config import Settings, settings
from src.devserver.redis_server import free_port
from src.emails import sns_signature
from src.emails.delivery import deliver
from src.emails.models import EmailStatus
from src.emails.sns_signature import NotSigned, sns_url
from tests.conftest import RUN_DIR
from tests.test_suppression import email, queue_to, suppressed

WEBHOOK = "/api/webhooks/ses"
TOPIC = "arn:aws:sns:eu-west-1:123456789012:herald-ses"
LOCALHOST = ipaddress.ip_address("127.0.0.1")
STAMP = "2026-11-29T20:00:00.000Z"


def certificate_for(key: rsa.RSAPrivateKey, days: int = 1) -> bytes:
    """A self-signed certificate for 127.0.0.1: SNS's signing certificate and the HTTPS server's."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(LOCALHOST)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


class FakeSns(BaseHTTPRequestHandler):
    """SNS's side over HTTPS: the signing certificate and the subscription's confirmation URL."""

    certificate = b""
    requests: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        FakeSns.requests.append(self.path)
        body = self.certificate if self.path.endswith(".pem") else b"<ConfirmSubscriptionResponse/>"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def sns_server():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    FakeSns.certificate = certificate_for(key)
    pem, key_file = RUN_DIR / "sns-cert.pem", RUN_DIR / "sns-key.pem"
    pem.write_bytes(FakeSns.certificate)
    pkcs8 = serialization.PrivateFormat.PKCS8
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption()))
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(pem, key_file)
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeSns)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield key, f"https://127.0.0.1:{server.server_port}", pem
    server.shutdown()


class Sns:
    """Signs messages as SNS does, with the key whose certificate the local server serves."""

    def __init__(self, key: rsa.RSAPrivateKey, base_url: str) -> None:
        self.key = key
        self.base_url = base_url
        self.cert_url = f"{base_url}/SimpleNotificationService-local.pem"

    def sign(self, message: dict, version: str = "1", key: rsa.RSAPrivateKey | None = None) -> dict:
        message = {"SignatureVersion": version, "SigningCertURL": self.cert_url, **message}
        algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
        signature = (key or self.key).sign(sns_signature.canonical(message), padding.PKCS1v15(), algorithm)
        return {**message, "Signature": base64.b64encode(signature).decode()}

    def notification(self, notice: dict, version: str = "1", **overrides: str) -> dict:
        message = {
            "Type": "Notification", "MessageId": "22b80b92-fdea-4c2c-8f9d", "TopicArn": TOPIC,
            "Message": json.dumps(notice), "Timestamp": STAMP, **overrides,
        }  # fmt: skip
        return self.sign(message, version)

    def confirmation(self, topic: str = TOPIC, subscribe_url: str = "") -> dict:
        url = subscribe_url or f"{self.base_url}/?Action=ConfirmSubscription&TopicArn={topic}&Token=2336412"
        message = {
            "Type": "SubscriptionConfirmation", "MessageId": "165545c9-2a5c-472c", "Token": "2336412",
            "TopicArn": topic, "Timestamp": STAMP, "SubscribeURL": url,
            "Message": f"You have chosen to subscribe to the topic {topic}.",
        }  # fmt: skip
        return self.sign(message)


@pytest.fixture
def sns(sns_server, monkeypatch):
    key, base_url, pem = sns_server
    monkeypatch.setattr(settings, "ses_sns_topic_arn", TOPIC)
    monkeypatch.setattr(settings, "ses_sns_cert_host_pattern", r"127\.0\.0\.1")
    monkeypatch.setenv("SSL_CERT_FILE", str(pem))  # httpx trusts the local server's certificate
    FakeSns.requests = []
    sns_signature._public_key.cache_clear()
    yield Sns(key, base_url)
    sns_signature._public_key.cache_clear()


UNKNOWN_USER = "smtp; 550 5.1.1 user unknown"


def sent_mail(addresses: tuple[str, ...]) -> dict:
    return {"messageId": "0102017a-mail", "source": "noreply@herald.local", "destination": list(addresses)}


def bounce(bounce_type: str, *addresses: str) -> dict:
    """SES's bounce notification, as SES documents it."""
    return {
        "notificationType": "Bounce",
        "bounce": {
            "bounceType": bounce_type,
            "bounceSubType": "General",
            "bouncedRecipients": [
                {"emailAddress": a, "action": "failed", "status": "5.1.1", "diagnosticCode": UNKNOWN_USER}
                for a in addresses
            ],
            "timestamp": "2026-11-29T19:59:58.000Z",
            "feedbackId": "0102017a-bounce",
        },
        "mail": sent_mail(addresses),
    }


def complaint(*addresses: str) -> dict:
    return {
        "notificationType": "Complaint",
        "complaint": {
            "complainedRecipients": [{"emailAddress": a} for a in addresses],
            "complaintFeedbackType": "abuse",
            "timestamp": "2026-11-29T19:59:58.000Z",
            "feedbackId": "0102017a-complaint",
        },
        "mail": sent_mail(addresses),
    }


def post(client, message: dict):
    # SNS posts its JSON as text/plain, with its type in a header.
    headers = {"Content-Type": "text/plain; charset=UTF-8", "X-Amz-Sns-Message-Type": str(message["Type"])}
    return client.post(WEBHOOK, content=json.dumps(message).encode(), headers=headers)


def test_a_permanent_bounce_suppresses_and_the_next_email_is_not_sent(client, sns, delivery_to_sink):
    message = sns.notification(bounce("Permanent", "Gone@Example.com", "left@example.com", "not an address"))
    response = post(client, message)
    assert response.status_code == 200, response.text
    assert response.json() == {"type": "Notification", "suppressed": 2}
    assert suppressed() == {"gone@example.com": "bounce", "left@example.com": "bounce"}
    assert FakeSns.requests == ["/SimpleNotificationService-local.pem"]
    assert post(client, message).json()["suppressed"] == 0  # SNS delivers at least once
    assert FakeSns.requests == ["/SimpleNotificationService-local.pem"]  # the certificate is cached

    held, sent = queue_to("gone@example.com", "here@example.com", publish=False)
    assert deliver([held, sent], fill=False).sent == 1
    assert email(held).status == EmailStatus.suppressed and "550 5.1.1 user unknown" in email(held).last_error
    assert email(sent).status == EmailStatus.sent
    assert [m.rcpt_tos for m in delivery_to_sink.messages] == [["here@example.com"]]


def test_a_complaint_suppresses_signature_version_2_too(client, sns):
    response = post(client, sns.notification(complaint("angry@example.com"), version="2"))
    assert response.status_code == 200, response.text
    assert suppressed() == {"angry@example.com": "complaint"}


DELIVERED = {"notificationType": "Delivery", "delivery": {"recipients": ["ok@example.com"]}}


@pytest.mark.parametrize(
    "notice", [bounce("Transient", "full@example.com"), bounce("Undetermined", "x@example.com"), DELIVERED]
)
def test_transient_bounces_and_deliveries_suppress_nothing(client, sns, notice):
    response = post(client, sns.notification(notice))
    assert response.status_code == 200 and response.json()["suppressed"] == 0
    assert suppressed() == {}


def test_bad_or_missing_signatures_are_403_and_change_nothing(client, sns):
    signed = sns.notification(bounce("Permanent", "gone@example.com"))
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    bad = [
        {**signed, "Message": json.dumps(bounce("Permanent", "other@example.com"))},  # changed since signed
        {**signed, "TopicArn": TOPIC + "-other"},
        sns.sign({k: v for k, v in signed.items() if k != "Signature"}, key=other_key),  # another key
        {**signed, "SignatureVersion": "2"},  # signed with SHA-1, claimed SHA-256
        {**signed, "SignatureVersion": "3"},
        {**signed, "Signature": "not base64!"},
        {k: v for k, v in signed.items() if k != "Signature"},
        {k: v for k, v in signed.items() if k != "MessageId"},
        {**signed, "Type": "Nonsense"},
    ]
    for message in bad:
        response = post(client, message)
        assert response.status_code == 403, (message, response.text)
        assert response.json()["detail"].startswith("not a message signed by Amazon SNS")
    assert suppressed() == {}


def test_a_message_from_another_topic_is_refused_even_when_signed(client, sns):
    message = sns.notification(bounce("Permanent", "gone@example.com"), TopicArn=TOPIC + "-other")
    response = post(client, message)
    assert response.status_code == 403 and "another SNS topic" in response.json()["detail"]
    assert suppressed() == {}


def test_a_certificate_on_a_host_not_allowed_is_refused_unfetched(client, sns):
    port = sns.base_url.rsplit(":", 1)[1]
    for cert_url in (
        f"https://localhost:{port}/SimpleNotificationService-local.pem",  # a host the pattern does not name
        f"http://127.0.0.1:{port}/SimpleNotificationService-local.pem",  # not HTTPS
        f"https://127.0.0.1@localhost:{port}/SimpleNotificationService-local.pem",  # userinfo look-alike
        "file:///etc/ssl/certs/ca-certificates.crt",
        f"{sns.base_url}/?Action=ConfirmSubscription",  # an SNS host, but no certificate
    ):
        sns.cert_url = cert_url
        response = post(client, sns.notification(bounce("Permanent", "gone@example.com")))
        assert response.status_code == 403 and "SigningCertURL" in response.json()["detail"], cert_url
    assert FakeSns.requests == [] and suppressed() == {}


def test_the_default_allows_only_sns_hosts_over_https():
    pattern = Settings(_env_file=None).ses_sns_cert_host_pattern
    for good in ("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-6209c161c6221fdf56ec1eb5c821d112.pem",
                 "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-x.pem"):  # fmt: skip
        assert sns_url(good, pattern, "SigningCertURL") == good
    for bad in (
        "http://sns.us-east-1.amazonaws.com/x.pem",
        "https://sns.us-east-1.amazonaws.com.evil.example/x.pem",
        "https://sns.us-east-1.amazonaws.com@evil.example/x.pem",
        "https://evil.example/sns.us-east-1.amazonaws.com/x.pem",
        "https://sqs.us-east-1.amazonaws.com/x.pem",
        None,
    ):
        with pytest.raises(NotSigned):
            sns_url(bad, pattern, "SigningCertURL")


def test_an_unreachable_certificate_is_503_so_sns_retries(client, sns):
    sns.cert_url = f"https://127.0.0.1:{free_port()}/SimpleNotificationService-local.pem"  # nothing listens
    response = post(client, sns.notification(bounce("Permanent", "gone@example.com")))
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert suppressed() == {}


def test_a_signed_subscription_for_the_topic_is_confirmed(client, sns):
    response = post(client, sns.confirmation())
    assert response.status_code == 200, response.text
    assert response.json() == {"type": "SubscriptionConfirmation", "suppressed": 0}
    assert FakeSns.requests[-1] == f"/?Action=ConfirmSubscription&TopicArn={TOPIC}&Token=2336412"


def test_a_subscription_unsigned_or_for_another_topic_is_not_confirmed(client, sns):
    forged = {**sns.confirmation(), "Token": "forged"}
    other_topic = sns.confirmation(topic=TOPIC + "-other")
    port = sns.base_url.rsplit(":", 1)[1]
    elsewhere = sns.confirmation(subscribe_url=f"https://localhost:{port}/?Action=ConfirmSubscription")
    for message in (forged, other_topic, elsewhere):
        assert post(client, message).status_code == 403
    assert not any("ConfirmSubscription" in path for path in FakeSns.requests)


def test_a_signed_notification_that_is_not_ses_json_is_422(client, sns):
    response = post(client, sns.notification({}, Message="plain text"))
    assert response.status_code == 422 and "SES's JSON" in response.json()["detail"]


@pytest.mark.parametrize("body", [b"", b"not json", b"[1, 2]", b"\xff\xfe"])
def test_a_body_that_is_no_sns_message_is_422(client, sns, body):
    response = client.post(WEBHOOK, content=body, headers={"Content-Type": "text/plain"})
    assert response.status_code == 422 and "SNS message" in response.json()["detail"]


def test_the_webhook_is_off_without_a_topic(client, sns, monkeypatch):
    monkeypatch.setattr(settings, "ses_sns_topic_arn", "")
    response = post(client, sns.notification(bounce("Permanent", "gone@example.com")))
    assert response.status_code == 404 and "SES_SNS_TOPIC_ARN" in response.json()["detail"]
    assert suppressed() == {} and FakeSns.requests == []
