"""What every HTTP answer of the API promises, before any endpoint runs.

`ApiHeaders`: API answers are data, never a page to sniff or a copy to keep. `nosniff` stops a
browser from treating JSON (which may echo user text) as HTML or script; `no-store` keeps tokens
and private data out of browser and proxy caches. A response that sets its own `Cache-Control`
(the SSE stream) keeps it.

`BodyLimit`: a request body over MAX_BODY_BYTES answers 413 before it is read whole: a declared
length at once, before authentication or admission, with nothing read; a chunked body as soon as
its count passes the limit. Not FastAPI's `max_body_size`: for a declared length it runs the
endpoint anyway and swaps whatever it answered (even a 413 of ours) for a plain-text 413.
"""

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

API_HEADERS = {"x-content-type-options": "nosniff", "cache-control": "no-store"}


def page_headers(form_action: str = "'none'") -> dict[str, str]:
    """What a public page outside /api sends: no script, nothing loaded, forms only to
    `form_action`, never framed, no referrer."""
    return {
        "x-content-type-options": "nosniff",
        "content-security-policy": (
            f"default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action {form_action}; "
            "frame-ancestors 'none'"
        ),
        "referrer-policy": "no-referrer",
    }


class ApiHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in API_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        detail = f"the request body is over {self.max_bytes} bytes"
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await JSONResponse({"detail": detail}, 413)(scope, receive, send)
            return
        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, detail)  # the app's handler answers it, as JSON
            return message

        await self.app(scope, counted_receive, send)
