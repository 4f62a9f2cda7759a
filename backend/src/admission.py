"""At most API_THREADS requests inside the app at once; the rest wait their turn in memory.

A request holds its database connection from its first query until FastAPI closes its session,
which happens on the event loop's schedule, after the endpoint's thread has moved on. Without a
bound, a burst of requests could each be holding a connection at that point and exhaust the pool.
Admitting as many requests as there are threads bounds the connections requests hold (the pool
has room for those, the streams' short lookups and the relay) and lets each admitted request
finish before the next starts, instead of all of them crawling along together. Streams, which live
for hours and use a connection only for moments, and the health probes are not counted (`/readyz`
checks on a thread of its own).
"""

import asyncio

from starlette.types import ASGIApp, Receive, Scope, Send

UNCOUNTED_PATHS = frozenset({"/healthz", "/readyz", "/api/notifications/stream"})


class AdmissionLimit:
    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self._turns: asyncio.Semaphore | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNCOUNTED_PATHS:
            await self.app(scope, receive, send)
            return
        if self._turns is None:
            self._turns = asyncio.Semaphore(self.limit)
        async with self._turns:
            await self.app(scope, receive, send)
