import asyncio
import contextlib
import logging
import re
from datetime import timedelta
from typing import Annotated, Any
from urllib.parse import unquote_plus

from fastapi import APIRouter, Header, HTTPException, Query, Request, WebSocket, WebSocketDisconnect, status
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from src.auth.deps import INVALID_TOKEN, CurrentUser, DbSession, token_claims, unauthorized
from src.auth.security import create_session_token
from src.config import settings
from src.db import SessionLocal, outside_transaction
from src.idempotency.deps import Idempotent
from src.notifications import live
from src.notifications.schemas import (
    AnnouncementIn,
    NotificationOut,
    NotificationPage,
    StreamToken,
    UnreadCount,
)
from src.notifications.service import NotificationService, to_payload
from src.notifications.sse import EventStream
from src.orgs.service import require_manager
from src.preferences.catalogue import AnyEventType
from src.validation import MAX_SEQ, PathId, QueryId

log = logging.getLogger("herald.live")
router = APIRouter(tags=["notifications"])


@router.get("/notifications")
def inbox(
    user: CurrentUser,
    session: DbSession,
    unread: bool = False,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    before: QueryId = None,
    type: Annotated[AnyEventType | None, Query(description="only this event type")] = None,
) -> NotificationPage:
    items = NotificationService.inbox(session, user.id, unread, limit, before, type)
    return NotificationPage(items=items, next_before=items[-1]["id"] if len(items) == limit else None)


@router.get("/notifications/unread-count")
def unread_count(user: CurrentUser, session: DbSession) -> UnreadCount:
    return UnreadCount(count=NotificationService.unread_count(session, user.id))


@router.post("/notifications/read-all")
def read_all(user: CurrentUser, session: DbSession) -> dict[str, int]:
    return {"marked": NotificationService.mark_all_read(session, user.id), "unread": 0}


@router.post("/notifications/{notification_id}/read")
def read(notification_id: PathId, user: CurrentUser, session: DbSession) -> NotificationOut:
    return NotificationOut(**NotificationService.mark_read(session, user.id, notification_id))


@router.post("/notifications/stream-token")
def stream_token(user: CurrentUser) -> StreamToken:
    """A short-lived token for EventSource and WebSocket clients, which cannot send headers."""
    lifetime = timedelta(seconds=settings.stream_token_seconds)
    return StreamToken(
        token=create_session_token(user.id, user.password_hash, "stream", lifetime),
        expires_in=settings.stream_token_seconds,
    )


@router.post(
    "/orgs/{org_id}/announcements", status_code=status.HTTP_201_CREATED, response_model=NotificationOut
)
def announce(
    org_id: PathId, body: AnnouncementIn, user: CurrentUser, session: DbSession, idempotent: Idempotent
) -> NotificationOut | Response:
    """Broadcast to every member of the organization (owners and admins only)."""

    def create() -> NotificationOut:
        require_manager(session, org_id, user)
        notification = NotificationService.broadcast(
            session, org_id, "announcement", body.title, body.body, {"author_id": user.id}
        )
        session.commit()
        return NotificationOut(**to_payload(notification))

    return idempotent.run(create)


def _query_token(query_string: bytes) -> str | None:
    """The stream token, taken only from a parameter spelled exactly `token`: one spelled any other
    way (`tok%65n`, which decodes to the same name) would slip past the log redaction."""
    for pair in query_string.split(b"&"):
        name, _, value = pair.partition(b"=")
        if name == b"token":
            return unquote_plus(value.decode("latin-1"))
    return None


def _stream_start(authorization: str | None, query_string: bytes) -> live.StreamStart:
    """The streaming user (an access token in the header, or a stream token in the query, `?token=`)
    and what their stream starts from.

    Uses its own short session: a stream lives for hours and must not hold a connection.
    """
    if authorization and authorization.lower().startswith("bearer "):
        user_id, fingerprint = token_claims(authorization[7:].strip())
    else:
        user_id, fingerprint = token_claims(_query_token(query_string), purpose="stream")
    with outside_transaction(SessionLocal()) as session:
        start = live.stream_start(session, user_id, fingerprint)
    if start is None:
        raise unauthorized(INVALID_TOKEN)
    return start


StreamPosition = Annotated[int | None, Query(ge=0, le=MAX_SEQ)]
_EVENT_ID = re.compile(r"[0-9]{1,18}")  # below MAX_SEQ


def _since(last_event_id: str | None, since: int | None) -> int | None:
    """Where a stream resumes: `Last-Event-ID` (EventSource sends back the last id it saw) wins over
    `?since=`; a header that is not an id of ours is ignored."""
    if last_event_id and _EVENT_ID.fullmatch(last_event_id.strip()):
        return int(last_event_id)
    return since


@router.get("/notifications/stream", response_class=Response)
async def stream(
    request: Request,
    since: StreamPosition = None,
    authorization: Annotated[str | None, Header()] = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> EventStream:
    """Server-Sent Events: `notification` (id = seq) and `unread_count`; send Last-Event-ID to resume.
    Authenticated by `?token=` (a stream token) or an `Authorization` header."""
    start = await run_in_threadpool(_stream_start, authorization, request.scope["query_string"])
    hub = request.app.state.hub
    return EventStream(live.events(hub, start, _since(last_event_id, since)), hub.send_watch)


ws_router = APIRouter(tags=["notifications"])


@ws_router.websocket("/ws/notifications")
async def websocket_stream(websocket: WebSocket, since: StreamPosition = None) -> None:
    """The same events as the SSE stream, as JSON text frames; `?since=` resumes, `?token=` authenticates."""
    try:
        start = await run_in_threadpool(
            _stream_start, websocket.headers.get("authorization"), websocket.scope["query_string"]
        )
    except HTTPException as exc:  # unauthorized: refuse the handshake
        await websocket.send_denial_response(JSONResponse({"detail": exc.detail}, exc.status_code))
        return
    await websocket.accept()

    async def send_events() -> str | None:
        """The reason the stream was closed for, if it was (the last event says it)."""
        event: dict[str, Any] = {}
        hub = websocket.app.state.hub
        async for batch in live.events(hub, start, since):
            for event in batch:
                await hub.send_watch.send(websocket.send_text(live.event_json(event)))
        return event["data"]["reason"] if event.get("event") == "closed" else None

    async def watch_for_close() -> None:
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass

    sender, watcher = asyncio.create_task(send_events()), asyncio.create_task(watch_for_close())
    done, pending = await asyncio.wait({sender, watcher}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    await asyncio.gather(*done, *pending, return_exceptions=True)
    if sender in done:
        if not sender.cancelled() and sender.exception() is not None:
            log.warning("websocket stream of user %s ended: %r", start.user_id, sender.exception())
        reason = None if sender.cancelled() or sender.exception() else sender.result()
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            if reason:  # policy violation: do not reconnect
                await websocket.close(code=1008, reason=reason)
            else:  # service restart / fell behind: reconnect with ?since=
                await websocket.close(code=1012)
