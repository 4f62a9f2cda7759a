"""Amazon SNS message signatures, checked as AWS documents: an RSA signature (PKCS#1 v1.5; SHA-1 for
SignatureVersion 1, SHA-256 for 2) over the canonical string of the message's fields, each name and
value on a line of its own, in a fixed order. The key is in the X.509 certificate at SigningCertURL,
which must be HTTPS on an SNS host (SES_SNS_CERT_HOST_PATTERN): anyone can sign with a certificate
of their own, so where it comes from is what makes a signature AWS's. Certificates are cached.
"""

import base64
import binascii
import functools
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

# The fields each type of message signs, in the order they are signed.
_CONFIRMATION_FIELDS = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")
SIGNED_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": _CONFIRMATION_FIELDS,
    "UnsubscribeConfirmation": _CONFIRMATION_FIELDS,
}
_HASHES = {"1": hashes.SHA1, "2": hashes.SHA256}
FETCH_TIMEOUT_SECONDS = 5.0


class NotSigned(Exception):
    """The message is not signed by SNS: refuse it."""


class CertificateUnavailable(Exception):
    """SNS's certificate could not be fetched now: a fault of the moment, worth SNS's retry."""


def sns_url(url: object, host_pattern: str, field: str) -> str:
    """`url` if it is HTTPS on a host SNS serves from; `NotSigned` otherwise. Also for the
    SubscribeURL, so a message cannot make Herald fetch an address of the sender's choosing."""
    parts = urlsplit(url) if isinstance(url, str) else None
    if (
        parts is None
        or parts.scheme != "https"
        or parts.username is not None
        or not parts.hostname
        or not re.fullmatch(host_pattern, parts.hostname, re.IGNORECASE)
    ):
        raise NotSigned(f"{field} is not an HTTPS URL on an SNS host: {str(url)[:200]!r}")
    return url  # type: ignore[return-value]


def canonical(message: dict[str, Any]) -> bytes:
    """What SNS signs: each signed field present, as `name\\nvalue\\n`."""
    fields = SIGNED_FIELDS.get(message.get("Type"))  # type: ignore[arg-type]
    if fields is None:
        raise NotSigned(f"not a type of SNS message: {str(message.get('Type'))[:100]!r}")
    lines = []
    for name in fields:
        value = message.get(name)
        if value is None and name == "Subject":
            continue
        if not isinstance(value, str):
            raise NotSigned(f"the signed field {name} is missing")
        lines.append(f"{name}\n{value}\n")
    return "".join(lines).encode()


def verify(message: dict[str, Any], host_pattern: str) -> None:
    """Return if SNS signed `message`; raise `NotSigned` or `CertificateUnavailable` if not."""
    algorithm = _HASHES.get(message.get("SignatureVersion"))  # type: ignore[arg-type]
    if algorithm is None:
        raise NotSigned("SignatureVersion must be 1 or 2")
    signed = canonical(message)
    cert_url = sns_url(message.get("SigningCertURL"), host_pattern, "SigningCertURL")
    if not urlsplit(cert_url).path.endswith(".pem"):
        raise NotSigned("SigningCertURL does not name a .pem certificate")
    key = _public_key(cert_url)
    try:
        signature = base64.b64decode(str(message.get("Signature")), validate=True)
        key.verify(signature, signed, padding.PKCS1v15(), algorithm())
    except (InvalidSignature, binascii.Error, ValueError):
        raise NotSigned("the signature does not match SNS's certificate") from None


@functools.lru_cache(maxsize=16)
def _public_key(url: str) -> rsa.RSAPublicKey:
    """SNS's key from its certificate, fetched once per process (failures are not cached)."""
    try:
        response = httpx.get(url, timeout=FETCH_TIMEOUT_SECONDS)
    except httpx.HTTPError as exc:
        raise CertificateUnavailable(f"cannot fetch SNS's signing certificate {url}: {exc}") from exc
    if response.is_client_error:
        raise NotSigned(f"no certificate at {url} ({response.status_code})")
    if not response.is_success:
        raise CertificateUnavailable(f"SNS answered {response.status_code} for its certificate {url}")
    try:
        certificate = x509.load_pem_x509_certificate(response.content)
    except ValueError:
        raise NotSigned(f"no PEM certificate at {url}") from None
    now = datetime.now(UTC)
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        raise NotSigned(f"the certificate at {url} is not valid now")
    key = certificate.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise NotSigned(f"the certificate at {url} has no RSA key")
    return key
