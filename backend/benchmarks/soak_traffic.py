"""The soak's users, in one asyncio loop in their own thread: status changes offered at a fixed rate,
live streams read as a browser's EventSource reads them, and a load balancer's health probes.

Every time is wall-clock (`time.time()`), comparable with the database's `created_at` and with the
fault windows the supervisor records.
"""

import asyncio
import json
import random
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime

import httpx

STATUSES = ("todo", "in_progress", "done")
MAX_IN_FLIGHT = 50
REQUEST_TIMEOUT = 35.0
PROBE_EVERY = 0.5
SLOW_PROBE = 1.0  # a health probe slower than this counts as unresponsive


@dataclass
class Change:
    """One PATCH. Its number also goes into the task's title, so `task_events` tells whether it committed."""

    number: int
    task_id: int
    start: float
    end: float = 0.0
    outcome: str = "in flight"  # "ok", "http_503", "timeout", "ConnectError", ...


class Probes:
    """GET /healthz on every API process every 0.5 s: (start, seconds, answered 200) per process."""

    def __init__(self, apis: list[str]) -> None:
        self.apis = apis
        self.results: list[list[tuple[float, float, bool]]] = [[] for _ in apis]

    def up(self, api: int) -> bool:
        return not self.results[api] or self.results[api][-1][2]

    async def run(self, client: httpx.AsyncClient, api: int) -> None:
        while True:
            started = time.time()
            try:
                ok = (await client.get(f"{self.apis[api]}/healthz", timeout=5)).status_code == 200
            except httpx.HTTPError:
                ok = False
            took = time.time() - started
            self.results[api].append((started, took, ok))
            await asyncio.sleep(max(0.0, PROBE_EVERY - took))

    def longest_unresponsive(self) -> float:
        """The longest run of failed or slow probes of any one process, first bad probe to next good one."""
        longest = 0.0
        for results in self.results:
            since = None
            for started, took, ok in results:
                good = ok and took <= SLOW_PROBE
                if not good and since is None:
                    since = started
                elif good and since is not None:
                    longest, since = max(longest, started - since), None
            if since is not None:
                longest = max(longest, results[-1][0] + results[-1][1] - since)
        return longest


class StatusChanges:
    """Open-loop load, as users are: an offer every 1/rate s whether or not earlier ones are done, at most
    MAX_IN_FLIGHT at once and never two for one task (an offer that cannot go out is shed), round robin
    over the API processes that pass their health probe."""

    def __init__(
        self, apis: list[str], tokens: dict[int, str], titles: dict[int, str], rate: float, probes: Probes
    ) -> None:
        self.apis, self.tokens, self.titles, self.rate, self.probes = apis, tokens, titles, rate, probes
        self.offers: list[float] = []
        self.changes: list[Change] = []
        self.shed = 0
        self.known: dict[int, str | None] = dict.fromkeys(titles, "todo")  # None: unknown after an error
        self.done = threading.Event()

    async def run(self, client: httpx.AsyncClient, until: float) -> None:
        busy: set[int] = set()
        in_flight: set[asyncio.Task[None]] = set()
        next_at = time.time()
        while next_at < until:
            await asyncio.sleep(max(0.0, next_at - time.time()))
            next_at += 1 / self.rate
            self.offers.append(time.time())
            free = [task_id for task_id in self.titles if task_id not in busy]
            if len(in_flight) >= MAX_IN_FLIGHT or not free:
                self.shed += 1
                continue
            task_id = random.choice(free)
            busy.add(task_id)
            job = asyncio.create_task(self._change(client, task_id, busy))
            in_flight.add(job)
            job.add_done_callback(in_flight.discard)
        await asyncio.gather(*in_flight)
        self.done.set()

    async def _change(self, client: httpx.AsyncClient, task_id: int, busy: set[int]) -> None:
        order = [(len(self.changes) + k) % len(self.apis) for k in range(len(self.apis))]
        base = self.apis[next((api for api in order if self.probes.up(api)), order[0])]
        change = Change(len(self.changes) + 1, task_id, time.time())
        self.changes.append(change)
        status = random.choice([s for s in STATUSES if s != self.known[task_id]])
        body = {"status": status, "title": f"{self.titles[task_id]} #{change.number}"}
        headers = {"Authorization": f"Bearer {random.choice(list(self.tokens.values()))}"}
        try:
            reply = await client.patch(
                f"{base}/api/tasks/{task_id}", json=body, headers=headers, timeout=REQUEST_TIMEOUT
            )
            change.outcome = "ok" if reply.status_code == 200 else f"http_{reply.status_code}"
        except httpx.TimeoutException:
            change.outcome = "timeout"
        except httpx.HTTPError as exc:
            change.outcome = type(exc).__name__
        finally:
            change.end = time.time()
            self.known[task_id] = status if change.outcome == "ok" else None
            busy.discard(task_id)


async def sse_events(lines: AsyncIterator[str]) -> AsyncIterator[dict[str, str]]:
    """Server-Sent Events as dicts of their fields (event, id, data, retry); comments are skipped."""
    fields: dict[str, str] = {}
    async for line in lines:
        if line and not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        elif not line and fields:
            yield fields
            fields = {}


@dataclass
class Stream:
    """One user's live stream, as EventSource keeps it: a fresh stream token per connection,
    Last-Event-ID on reconnect, the server's `retry:` as the delay, the other API process when one
    does not answer."""

    user_id: int
    access_token: str
    apis: list[str]
    api: int
    first_id: int | None = None  # the seq the first subscription started after: it may see all later
    last_id: int | None = None
    retry: float = 2.0
    connects: int = 0
    received: dict[int, list[float]] = field(default_factory=dict)  # seq -> receipt times
    created: dict[int, float] = field(default_factory=dict)  # seq -> the notification's created_at

    async def run(self, client: httpx.AsyncClient) -> None:
        while True:
            base, opened = self.apis[self.api], False
            try:
                auth = {"Authorization": f"Bearer {self.access_token}"}
                reply = await client.post(f"{base}/api/notifications/stream-token", headers=auth, timeout=5)
                reply.raise_for_status()
                headers = {"Accept": "text/event-stream"}
                if self.last_id is not None:
                    headers["Last-Event-ID"] = str(self.last_id)
                url = f"{base}/api/notifications/stream?token={reply.json()['token']}"
                timeout = httpx.Timeout(5, read=10)  # pings come every LIVE_PING_SECONDS
                async with client.stream("GET", url, headers=headers, timeout=timeout) as response:
                    response.raise_for_status()
                    opened = True
                    self.connects += 1
                    async for event in sse_events(response.aiter_lines()):
                        self._receive(event)
            except (httpx.HTTPError, httpx.StreamError, ValueError, KeyError):
                pass  # reconnect, as EventSource does
            if not opened:
                self.api = (self.api + 1) % len(self.apis)
            await asyncio.sleep(self.retry)

    def _receive(self, event: dict[str, str]) -> None:
        if "retry" in event:
            self.retry = int(event["retry"]) / 1000
        if "id" in event:
            self.last_id = int(event["id"])
            if self.first_id is None and event.get("event") == "unread_count":
                self.first_id = self.last_id
        if event.get("event") == "notification":
            seq = int(event["id"])
            self.received.setdefault(seq, []).append(time.time())
            self.created[seq] = datetime.fromisoformat(json.loads(event["data"])["created_at"]).timestamp()


class Traffic:
    """All of the above on one event loop: `run()` in a thread; `stop` ends it (the load ends by itself)."""

    def __init__(self, apis: list[str], tokens: dict[int, str], titles: dict[int, str], rate: float) -> None:
        self.probes = Probes(apis)
        self.load = StatusChanges(apis, tokens, titles, rate, self.probes)
        users, n = list(tokens), len(tokens)  # 20 streams over the users and, crosswise, the API processes
        self.streams = [
            Stream(users[i % n], tokens[users[i % n]], apis, (i + i // n) % len(apis)) for i in range(20)
        ]
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def check(self) -> None:
        if self.error is not None:
            raise RuntimeError("the soak's traffic failed") from self.error

    def run(self, until: float) -> None:
        try:
            asyncio.run(self._main(until))
        except BaseException as exc:  # reported by the harness: a traffic failure is a harness failure
            self.error = exc
            self.load.done.set()

    async def _main(self, until: float) -> None:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=100)
        async with httpx.AsyncClient(limits=limits) as client:
            jobs = [self.load.run(client, until), *(stream.run(client) for stream in self.streams)]
            jobs += [self.probes.run(client, api) for api in range(len(self.probes.apis))]
            tasks = [asyncio.create_task(job) for job in jobs]
            while not (
                self.stop.is_set() or any(t.done() and not t.cancelled() and t.exception() for t in tasks)
            ):
                await asyncio.sleep(0.2)  # the load ends by itself, the rest when told (or when one fails)
            for task in tasks:
                task.cancel()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            failures = [o for o in outcomes if o is not None and not isinstance(o, asyncio.CancelledError)]
            if failures:
                raise RuntimeError(f"the load, a stream or a probe failed: {failures!r}")
