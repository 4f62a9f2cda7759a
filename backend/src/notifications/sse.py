"""A lean Server-Sent Events response.

A stream costs one task plus one that waits for the client to leave; at a thousand idle streams
per process that matters (EventSourceResponse from sse-starlette spends an anyio task group of
four tasks on each, about 14 KB more per connection here). Keep-alive pings come from the event
source, a frozen client is dropped by the hub's `SendWatch`, and a stream ends cleanly when its
source ends (the hub drains every stream on shutdown).

Every event is a write to every stream it concerns, so the path of one write matters: its body
chunks go straight to the `send` that `DirectBody` (the outermost of Herald's middlewares) was
given, not through the ones inside it, which act on a response's start (request id, API headers,
error handling) and never on its body. At 5,000 streams the ten wrappers and the per-send timeout
that was here took a third of a broadcast's time.
"""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from src.notifications.live import to_json
from src.notifications.send_watch import SendWatch

RETRY_MS = 2000  # how long EventSource waits before reconnecting
_OUTER_SEND = "herald.outer_send"


class DirectBody:
    """Puts the `send` it is given into the scope, for `EventStream`'s body chunks."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[_OUTER_SEND] = send
        await self.app(scope, receive, send)


def encode(event: dict[str, Any]) -> bytes:
    if event["event"] == "ping":
        return b": ping\n\n"
    head = f"id: {event['id']}\n" if "id" in event else ""
    data = event.get("json") or to_json(event["data"])
    return f"{head}event: {event['event']}\ndata: {data}\n\n".encode()


class EventStream(Response):
    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[list[dict[str, Any]]], watch: SendWatch) -> None:
        # No Response.__init__: it would declare a Content-Length for an endless body.
        self.status_code = 200
        self.background = None
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no"),
        ]
        self.events = events
        self.watch = watch

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        streaming = asyncio.current_task()
        assert streaming is not None

        async def cancel_when_client_leaves() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            streaming.cancel()

        watcher = asyncio.create_task(cancel_when_client_leaves())
        try:
            await send(
                {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
            )
            await send(
                {"type": "http.response.body", "body": f"retry: {RETRY_MS}\n\n".encode(), "more_body": True}
            )
            # The response has started (its headers went through every middleware): the body goes
            # direct. Without DirectBody (an app built without it), through `send` as usual.
            direct = scope.get(_OUTER_SEND, send)
            async for batch in self.events:
                body = b"".join(encode(event) for event in batch)
                await self.watch.send(direct({"type": "http.response.body", "body": body, "more_body": True}))
            await direct({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            # Cancelled because the client left, or stopped reading: it recovers from the database
            # on reconnect. Anyone else's cancellation goes on.
            if not (watcher.done() or self.watch.cut_off(streaming)):
                raise
        except OSError:
            pass  # the connection broke
        finally:
            watcher.cancel()
            await self.events.aclose()  # type: ignore[attr-defined]
