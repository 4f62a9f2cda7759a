"""`POST /api/webhooks/ses`: Amazon SES's bounce and complaint notifications, through an SNS topic's
HTTPS subscription. Deliberately without a login: each message is signed by SNS (see
`sns_signature.py`) and must come from the topic SES_SNS_TOPIC_ARN names.

A permanent bounce or a complaint suppresses each address it names; a transient bounce (a full
mailbox, an auto-reply) says nothing lasting and suppresses none. The subscription is confirmed here,
once its confirmation request proves to be SNS's and for that topic. A replayed message changes
nothing: its addresses are suppressed already.
"""

import json
import logging
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Depends

from src.auth.deps import DbSession
from src.config import settings
from src.emails import sns_signature
from src.emails.schemas import SesReceipt
from src.emails.suppressions import NewSuppression, suppress
from src.emails.webhooks import raw_body, reported
from src.errors import Forbidden, Invalid, NotFound, Unavailable

log = logging.getLogger("herald.emails")
router = APIRouter(prefix="/webhooks", tags=["webhooks"])


def _signed_message(body: bytes) -> dict[str, Any]:
    """The SNS message in `body`, once its signature and topic are checked."""
    if not settings.ses_sns_topic_arn:
        raise NotFound("the SES notification webhook is off: set SES_SNS_TOPIC_ARN to turn it on")
    try:
        message = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        message = None
    if not isinstance(message, dict):
        raise Invalid("the body must be an SNS message: a JSON object")
    try:
        sns_signature.verify(message, settings.ses_sns_cert_host_pattern)
    except sns_signature.NotSigned as exc:
        raise Forbidden(f"not a message signed by Amazon SNS: {exc}") from None
    except sns_signature.CertificateUnavailable as exc:
        log.warning("SES webhook: %s", exc)
        raise Unavailable("SNS's signing certificate cannot be fetched now; retry shortly") from None
    if message["TopicArn"] != settings.ses_sns_topic_arn:
        raise Forbidden("the message is from another SNS topic than SES_SNS_TOPIC_ARN")
    return message


def _confirm(message: dict[str, Any]) -> None:
    """Visit the SubscribeURL, as SNS asks, so the topic starts delivering here."""
    try:
        url = sns_signature.sns_url(
            message["SubscribeURL"], settings.ses_sns_cert_host_pattern, "SubscribeURL"
        )
    except sns_signature.NotSigned as exc:
        raise Forbidden(str(exc)) from None
    try:
        httpx.get(url, timeout=sns_signature.FETCH_TIMEOUT_SECONDS).raise_for_status()
    except httpx.HTTPError as exc:
        log.warning("SES webhook: confirming the subscription to %s failed: %s", message["TopicArn"], exc)
        raise Unavailable("SNS did not take the subscription's confirmation; retry shortly") from None
    log.info("SES webhook: subscribed to %s", message["TopicArn"])


def _suppressions(notice: dict[str, Any]) -> list[NewSuppression]:
    """The addresses an SES notification (or a configuration set's event) says to stop mailing."""
    kind = notice.get("notificationType") or notice.get("eventType")
    if kind == "Bounce":
        bounce = notice.get("bounce") or {}
        if bounce.get("bounceType") != "Permanent":
            return []
        recipients, reason = bounce.get("bouncedRecipients"), "bounce"
    elif kind == "Complaint":
        recipients, reason = (notice.get("complaint") or {}).get("complainedRecipients"), "complaint"
    else:
        return []  # Delivery, Send, Open, ...: nothing to stop
    found = []
    for recipient in recipients if isinstance(recipients, list) else []:
        if not isinstance(recipient, dict):
            recipient = {}
        detail = recipient.get("diagnosticCode") or recipient.get("status") or ""
        if suppression := reported(recipient.get("emailAddress"), reason, detail, f"SES {kind}"):
            found.append(suppression)
    return found


@router.post("/ses")
def ses_notifications(session: DbSession, body: Annotated[bytes, Depends(raw_body)]) -> SesReceipt:
    """One SNS message. 403 for a missing or wrong signature, a certificate from elsewhere or
    another topic; 404 while SES_SNS_TOPIC_ARN is not set; 503 when SNS cannot be reached to
    check (SNS then retries). Nothing changes unless it answers 200."""
    message = _signed_message(body)
    kind = message["Type"]
    if kind == "SubscriptionConfirmation":
        _confirm(message)
        return SesReceipt(type=kind, suppressed=0)
    if kind != "Notification":
        return SesReceipt(type=kind, suppressed=0)  # UnsubscribeConfirmation: nothing to do
    try:
        notice = json.loads(message["Message"])
    except ValueError:
        notice = None
    if not isinstance(notice, dict):
        raise Invalid("the SNS notification's Message must be SES's JSON notification")
    suppressed = suppress(session, _suppressions(notice))
    session.commit()
    if suppressed:
        log.info("SES notification: %d address(es) suppressed", suppressed)
    return SesReceipt(type=kind, suppressed=suppressed)
