"""`POST /api/webhooks/sendgrid`: SendGrid's Event Webhook, deliberately without a login and
protected by SendGrid's signature instead (see `sendgrid_signature.py`).

Events `bounce` (but not `blocked`, SendGrid's temporary refusal), `dropped` and `spamreport`
suppress their address. Others (delivered, open, ...) are accepted and ignored. A signed request
older than SENDGRID_WEBHOOK_MAX_AGE_SECONDS is refused, so a captured batch cannot be replayed later,
say after a suppression was lifted; within that window a replay changes nothing.
"""

import json
import logging
import re
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request

from src.auth.deps import DbSession
from src.config import settings
from src.emails.schemas import SendGridReceipt
from src.emails.sendgrid_signature import SIGNATURE_HEADER, TIMESTAMP_HEADER, public_key, signature_valid
from src.emails.service import normalized_address
from src.emails.suppressions import NewSuppression, suppress
from src.errors import Forbidden, Invalid, NotFound

log = logging.getLogger("herald.emails")
router = APIRouter(prefix="/webhooks", tags=["webhooks"])

SUPPRESSING_EVENTS = ("bounce", "dropped", "spamreport")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


async def _raw_body(request: Request) -> bytes:
    """The bytes SendGrid signed, exactly as they came."""
    return await request.body()


def _verified(body: bytes, signature: str | None, timestamp: str | None) -> None:
    if not settings.sendgrid_webhook_public_key:
        raise NotFound("the SendGrid event webhook is off: set SENDGRID_WEBHOOK_PUBLIC_KEY to turn it on")
    if not signature or not timestamp:
        raise Forbidden(f"a signed request is expected: {SIGNATURE_HEADER} and {TIMESTAMP_HEADER}")
    key = public_key(settings.sendgrid_webhook_public_key)
    if not _TIMESTAMP.fullmatch(timestamp) or not signature_valid(key, signature, timestamp, body):
        raise Forbidden("the signature does not match the SendGrid verification key")
    if abs(time.time() - int(timestamp)) > settings.sendgrid_webhook_max_age_seconds:
        raise Forbidden("the signed timestamp is too old (or in the future): a replayed request is refused")


def _suppressions(events: list[Any]) -> list[NewSuppression]:
    found = []
    for event in events:
        kind = event.get("event")
        if kind not in SUPPRESSING_EVENTS or (kind == "bounce" and event.get("type") == "blocked"):
            continue
        address = event.get("email")
        try:
            address = normalized_address(address) if isinstance(address, str) else None
        except Invalid:
            address = None
        if address is None:
            log.warning("SendGrid %s event without a valid address: ignored", kind)
            continue
        detail = event.get("reason") or event.get("response") or ""
        found.append(NewSuppression(address, kind, detail if isinstance(detail, str) else ""))
    return found


@router.post("/sendgrid")
def sendgrid_events(
    session: DbSession,
    body: Annotated[bytes, Depends(_raw_body)],
    signature: Annotated[str | None, Header(alias=SIGNATURE_HEADER)] = None,
    timestamp: Annotated[str | None, Header(alias=TIMESTAMP_HEADER)] = None,
) -> SendGridReceipt:
    """A batch of SendGrid events, signed by SendGrid. Answers 403 for a missing, wrong or stale
    signature and 404 while SENDGRID_WEBHOOK_PUBLIC_KEY is not set; either way nothing changes."""
    _verified(body, signature, timestamp)
    try:
        events = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        events = None
    if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
        raise Invalid("the body must be a JSON array of SendGrid event objects")
    suppressed = suppress(session, _suppressions(events))
    session.commit()
    if suppressed:
        log.info("SendGrid events: %d address(es) suppressed", suppressed)
    return SendGridReceipt(events=len(events), suppressed=suppressed)
