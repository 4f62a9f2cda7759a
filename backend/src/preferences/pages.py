"""Public pages outside /api: where an email's unsubscribe link and preferences link lead.

`/unsubscribe/{token}` needs no login: the signed token says whose email of which types it may turn
off. A GET only shows what a POST would do (link scanners and mail clients prefetch links); a POST of
`List-Unsubscribe=One-Click` (RFC 8058), as mail clients send it, turns it off and answers JSON; the
page's own forms get the page back, offering "all email" and "undo".
"""

from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates

from src.auth.deps import DbSession
from src.auth.models import User
from src.errors import Forbidden, Invalid
from src.http_guards import page_headers
from src.preferences import service
from src.preferences.catalogue import CATALOGUE, EMAIL_CHOICES
from src.preferences.schemas import UnsubscribeOut
from src.preferences.unsubscribe import emailed_types, preferences_url, read_token

router = APIRouter(include_in_schema=False)
public_router = APIRouter(tags=["preferences"])
_templates = Jinja2Templates(directory=Path(__file__).parent / "templates")  # autoescapes .html
_HEADERS = {**page_headers("'self'"), "cache-control": "no-store"}


def _user(session: DbSession, token: str) -> tuple[User, list[str]]:
    user_id, types = read_token(token)
    user = session.get(User, user_id)
    if user is None:
        raise Forbidden("this unsubscribe link is not valid: use the one in your latest email")
    return user, types


def _page(request: Request, token: str, types: list[str], **context: object) -> HTMLResponse:
    labels = [CATALOGUE[t].label for t in types]
    return _templates.TemplateResponse(
        request,
        "unsubscribe.html",
        {"token": token, "labels": labels, "preferences_url": preferences_url(), **context},
        headers=_HEADERS,
    )


@router.get("/unsubscribe/{token}", response_class=HTMLResponse)
def unsubscribe_page(token: str, request: Request, session: DbSession) -> HTMLResponse:
    _owner, types = _user(session, token)
    return _page(request, token, types, done=None, restore=[])


def _restore(entries: list[str]) -> service.Choices:
    """`type:value` pairs from the undo form; an empty value drops the choice."""
    choices: service.Choices = {}
    for entry in entries:
        event_type, _, value = entry.partition(":")
        if event_type not in emailed_types() or (value and value not in EMAIL_CHOICES):
            raise Invalid(f"cannot restore {entry!r}: expected <event type>:<immediate|digest|off|>")
        choices[event_type] = {"email": value or None}
    return choices


@public_router.post("/unsubscribe/{token}", response_model=UnsubscribeOut)
def unsubscribe(
    token: str,
    request: Request,
    session: DbSession,
    one_click: Annotated[Literal["One-Click"] | None, Form(alias="List-Unsubscribe")] = None,
    scope: Annotated[Literal["all"] | None, Form()] = None,
    restore: Annotated[list[str] | None, Form(max_length=10)] = None,
    page: Annotated[bool, Form()] = False,
) -> UnsubscribeOut | Response:
    """One-click unsubscribe: `List-Unsubscribe=One-Click` turns off the email of the link's event
    types; `scope=all` every email that can be turned off; `restore=<type>:<value>` undoes. No login,
    no cookies: the token is the authority. `page=true` answers the HTML page instead of JSON."""
    user, types = _user(session, token)
    actions = [a for a in (one_click, scope, restore) if a]
    if len(actions) != 1:
        raise Invalid("send exactly one of List-Unsubscribe=One-Click, scope=all or restore=<type>:<value>")
    if restore:
        choices = _restore(restore)
    else:
        choices = {t: {"email": "off"} for t in (emailed_types() if scope else types)}
    previous = service.set_user_choices(session, user.id, choices)
    session.commit()
    now = service.effective(service.user_choices(session, user.id), {})
    email = {t: now[t]["email"] for t in choices}
    detail = "your choices are restored" if restore else "you will get no more of these emails"
    if not page:
        return UnsubscribeOut(detail=detail, email=email)
    undo = [f"{t}:{channels['email']}" for t, channels in previous.items()] if not restore else []
    return _page(request, token, list(choices), done=detail, restore=undo)


@router.get("/preferences", response_class=HTMLResponse)
def preferences_page(request: Request) -> HTMLResponse:
    """Where emails' "preferences" link leads: until the web app exists, how to use the API."""
    return _templates.TemplateResponse(request, "preferences.html", {}, headers=_HEADERS)
