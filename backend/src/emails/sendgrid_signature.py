"""SendGrid's Signed Event Webhook: an ECDSA (P-256, SHA-256) signature over the
`X-Twilio-Email-Event-Webhook-Timestamp` header's value followed by the raw request body, sent
base64-encoded (DER) in `X-Twilio-Email-Event-Webhook-Signature`. The verification key is shown by
SendGrid as base64 DER (a SubjectPublicKeyInfo, without PEM armour).

Imports nothing of Herald's, so the settings can check a configured key at start-up.
"""

import base64
import binascii
from functools import lru_cache

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"


@lru_cache(maxsize=4)
def public_key(value: str) -> ec.EllipticCurvePublicKey:
    """The key SendGrid shows; ValueError saying what is wrong with anything else."""
    try:
        key = load_der_public_key(base64.b64decode(value.strip(), validate=True))
    except (ValueError, binascii.Error) as exc:
        raise ValueError(f"not a base64 DER public key as SendGrid shows it: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("SendGrid's verification key is an ECDSA P-256 key; this one is not")
    return key


def signature_valid(key: ec.EllipticCurvePublicKey, signature: str, timestamp: str, body: bytes) -> bool:
    try:
        der = base64.b64decode(signature, validate=True)
        key.verify(der, timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return True
    except (InvalidSignature, ValueError, binascii.Error):
        return False
