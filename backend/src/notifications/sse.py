"""A lean Server-Sent Events response.

A stream costs one task plus one that waits for the client to leave; at a thousand idle streams
per process that matters (EventSourceResponse from sse-starlette spends an anyio task group of
four tasks on each, about 14 KB more per connection here). Keep-alive pings come from the event
source, a frozen client is dropped after `send_timeout`, and a stream ends cleanly when its
source ends (the hub drains every stream on shutdown).
"""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from src.notifications.live import to_json

RETRY_MS = 2000  # how long EventSource waits before reconnecting


def encode(event: dict[str, Any]) -> bytes:
    if event["event"] == "ping":
        return b": ping\n\n"
    head = f"id: {event['id']}\n" if "id" in event else ""
    data = event.get("json") or to_json(event["data"])
    return f"{head}event: {event['event']}\ndata: {data}\n\n".encode()


class EventStream(Response):
    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[list[dict[str, Any]]], send_timeout: float) -> None:
        # No Response.__init__: it would declare a Content-Length for an endless body.
        self.status_code = 200
        self.background = None
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no"),
        ]
        self.events = events
        self.send_timeout = send_timeout

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
            async for batch in self.events:
                body = b"".join(encode(event) for event in batch)
                async with asyncio.timeout(self.send_timeout):  # not wait_for: a task per call (3.11)
                    await send({"type": "http.response.body", "body": body, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not watcher.done():
                raise  # cancelled by someone else than the client leaving
        except (TimeoutError, OSError):
            pass  # a client that stopped reading: drop it, it recovers from the database on reconnect
        finally:
            watcher.cancel()
            await self.events.aclose()  # type: ignore[attr-defined]
