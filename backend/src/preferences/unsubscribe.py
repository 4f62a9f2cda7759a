"""One-click unsubscribe (RFC 8058): signed links bound to one user and the event types of the email
that carries them, and what following one changes."""

from datetime import timedelta
from urllib.parse import quote

from src.auth.security import create_token, decode_claims
from src.config import settings
from src.errors import Forbidden
from src.preferences.catalogue import CATALOGUE, Channel

PURPOSE = "unsubscribe"


def unsubscribe_url(user_id: int, event_types: list[str]) -> str:
    """The link that turns these event types' email off for this user; the signature covers both."""
    token = create_token(
        user_id, PURPOSE, timedelta(days=settings.unsubscribe_token_days), types=sorted(set(event_types))
    )
    return f"{settings.public_url}/unsubscribe/{token}"


def preferences_url() -> str:
    return f"{settings.public_url}/preferences"


def list_unsubscribe_headers(url: str) -> dict[str, str]:
    """The headers mail clients show an unsubscribe button for and POST to without asking."""
    targets = [f"<{url}>"]
    if settings.unsubscribe_mailto:
        token = url.rpartition("/")[2]
        targets.append(f"<mailto:{settings.unsubscribe_mailto}?subject={quote('unsubscribe ' + token)}>")
    return {"List-Unsubscribe": ", ".join(targets), "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}


def read_token(token: str) -> tuple[int, list[str]]:
    """(user id, event types) of a link signed here; Forbidden for a forged, altered or expired one."""
    claims = decode_claims(token, PURPOSE)
    types = claims.get("types") if claims else None
    if (
        claims is None
        or not isinstance(types, list)
        or not types
        or not all(
            isinstance(t, str) and Channel.email in getattr(CATALOGUE.get(t), "channels", ()) for t in types
        )
    ):
        raise Forbidden("this unsubscribe link is not valid: use the one in your latest email")
    return int(claims["sub"]), types


def emailed_types() -> list[str]:
    """Every event type whose email a user can turn off: what "all email" means."""
    return [kind.type for kind in CATALOGUE.values() if Channel.email in kind.channels]
