"""A lean Server-Sent Events response.

A stream costs three tasks: the request's, one that writes its events and one that waits for the
client to leave. At a thousand idle streams per process that matters (EventSourceResponse from
sse-starlette spends an anyio task group of four tasks on each, about 14 KB more per connection
here). Keep-alive pings come from the event source, a frozen client is dropped by the hub's
`SendWatch`, and a stream ends cleanly when its source ends (the hub drains every stream on shutdown).

Every event is a write to every stream it concerns, so the path of one write matters. Its body
chunks go straight to the server's `send`, which `DirectBody` (outside every middleware, Starlette's
own included) was given, not through the wrappers inside it: they act on a response's start
(request id, API headers, error handling), never on its body. And they are written by a task of
their own, so an event resumes a short chain of coroutines, not the request's twenty. At 5,000
streams the wrappers and a timeout per send took a third of a broadcast's time, and resuming that
chain a sixth (py-spy).
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
        pump = asyncio.create_task(self._pump(send, scope.get(_OUTER_SEND, send)))

        async def cancel_when_client_leaves() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            pump.cancel()

        watcher = asyncio.create_task(cancel_when_client_leaves())
        try:
            await pump
        except asyncio.CancelledError:
            # Cancelled because the client left, or stopped reading: it recovers from the database
            # on reconnect. Anyone else's cancellation goes on.
            if not (watcher.done() or self.watch.cut_off(pump)):
                raise
        except OSError:
            pass  # the connection broke
        finally:
            pump.cancel()
            watcher.cancel()

    async def _pump(self, send: Send, direct: Send) -> None:
        """The whole response, in a task of its own: each event resumes this short chain of
        coroutines, not the request's twenty (server, middlewares, router), which cost a write as
        much again. The start goes through every middleware (`send`); once it has, the body goes
        `direct` (the server's own `send`, or `send` without DirectBody)."""
        pump = asyncio.current_task()
        assert pump is not None
        watch = self.watch
        try:
            await self._start(send)
            async for batch in self.events:
                body = b"".join(encode(event) for event in batch)
                watch.begin(pump)
                await direct({"type": "http.response.body", "body": body, "more_body": True})
                watch.end(pump)
            await direct({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watch.end(pump)
            await self.events.aclose()  # type: ignore[attr-defined]

    async def _start(self, send: Send) -> None:
        """Apart, so the pump's frame, which lives as long as the stream, keeps none of this."""
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send(
            {"type": "http.response.body", "body": f"retry: {RETRY_MS}\n\n".encode(), "more_body": True}
        )
