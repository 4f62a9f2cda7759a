"""Live delivery inside one API process: one Redis subscription, fanned out in memory.

`LiveHub` holds the process's only subscription and dispatches each notification, in seq order, to
the subscribers it concerns. Streams never talk to Redis themselves. Every stream first replays
from the database what its client missed, then takes live events, skipping any seq it already sent:
no gap, no duplicate. A subscriber that falls too far behind is disconnected and recovers the same
way on reconnect; the hub never waits for one.

A user has at most STREAMS_PER_USER streams over all processes: each stream is listed, with the time
it opened, in a Redis sorted set per user (the streams a process opened within LIST_DELAY, in one
call); listing one trims the set to the newest STREAMS_PER_USER and tells every process, over the
fan-out channel, to close the streams trimmed off, with a reason the client can read. Entries of a
process that crashed are the oldest, so they are trimmed first. While Redis is unreachable the
limit holds per process instead.
"""

import asyncio
import contextlib
import json
import logging
import signal
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import redis
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from src import outages
from src.auth.security import password_fingerprint
from src.config import settings
from src.db import SessionLocal
from src.notifications.models import NotificationSequence
from src.notifications.send_watch import SendWatch
from src.notifications.service import CHANNEL, NotificationService, last_seq
from src.orgs.models import Membership
from src.redis_client import async_redis

log = logging.getLogger("herald.live")

QUEUE_LIMIT = 1000  # events a subscriber may have waiting before it is cut off to recover
TOO_MANY_STREAMS = "too many streams: this user opened a newer one; do not reconnect this one"
TOO_OLD = "too old: notifications after this Last-Event-ID were deleted by retention; refetch the inbox"
UNKNOWN = "unknown: this Last-Event-ID was never given out here (a restored database?); refetch the inbox"
PING: dict[str, Any] = {"kind": "ping"}
LIST_DELAY = 0.05  # new streams are listed in Redis together, this often at most
STREAM_LIST_SECONDS = 86_400  # a user's list of streams outlives no idle day (crashed processes' entries)


@dataclass(eq=False)
class Subscriber:
    """One stream's place in the hub. Its waiting events are a bare deque and one future, not an
    asyncio.Queue: that costs 3.3 KB per stream (four deques and an Event) where this costs 0.8."""

    user_id: int
    org_ids: frozenset[int]
    waiting: deque[dict[str, Any]] = field(default_factory=deque)
    woken: asyncio.Future[None] | None = None  # set while the stream waits for an event
    quiet: bool = True  # nothing was offered since the hub's last round of pings
    lagging: bool = False
    closing: bool = False
    reason: str | None = None  # why it was closed, when its client should not just reconnect
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    opened: float = field(default_factory=time.time)

    def close(self, reason: str | None = None) -> None:
        """End the stream cleanly; without a reason its client reconnects and recovers. A reason
        given once stays, whatever closes the stream next (a drain, a revoke)."""
        self.closing, self.reason = True, self.reason or reason
        self.offer({"kind": "close"})

    def offer(self, event: dict[str, Any]) -> None:
        if len(self.waiting) >= QUEUE_LIMIT:
            self.lagging = True
            return
        self.waiting.append(event)
        self.quiet = False
        if self.woken is not None and not self.woken.done():
            self.woken.set_result(None)

    async def next_event(self) -> dict[str, Any]:
        while not self.waiting:
            self.woken = asyncio.get_running_loop().create_future()
            try:
                await self.woken
            finally:
                self.woken = None
        return self.waiting.popleft()


class LiveHub:
    def __init__(self) -> None:
        self.cursor = 0  # every seq up to here has been dispatched
        self.by_user: dict[int, set[Subscriber]] = {}
        self.by_org: dict[int, set[Subscriber]] = {}
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._pings: asyncio.Task[None] | None = None
        self._membership_checks: asyncio.Task[None] | None = None
        self._stopping = False
        self._draining = False
        # Commands; the subscription has its own connection. Retried on a fresh connection after a
        # Redis restart: without it, the first command after one fails (a transaction too).
        self._redis = async_redis(retry_on_error=[redis.ConnectionError])
        # Streams to add to (opened) and remove from (ended) their users' sets in Redis, by one task
        # at a time, so a removal never overtakes its stream's listing.
        self._to_list: list[Subscriber] = []
        self._to_forget: list[Subscriber] = []
        self._syncing: asyncio.Task[None] | None = None
        self._list_streams = self._redis.register_script(_LIST_STREAMS)
        self.send_watch = SendWatch(settings.live_send_timeout)

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self.cursor = await run_in_threadpool(_last_seq)
        self._task = asyncio.create_task(self._run(), name="herald-live-hub")
        self._pings = asyncio.create_task(self._ping_quiet_streams(), name="herald-live-pings")
        self._membership_checks = asyncio.create_task(
            self._end_streams_whose_orgs_changed(), name="herald-live-memberships"
        )
        self.send_watch.start()

    def drain(self) -> None:
        """Ask every stream to end cleanly: clients reconnect (elsewhere) and recover what they miss.
        Streams that open from now on end at once."""
        self._draining = True
        for subscribers in self.by_user.values():
            for subscriber in subscribers:
                subscriber.close()

    def drain_on_exit_signals(self) -> None:
        """Drain when the server is told to stop, not after: it waits for open responses to finish,
        and a stream never finishes by itself."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous = signal.getsignal(signum)
            if not callable(previous):
                continue

            def handler(
                number: int, frame: FrameType | None, previous: Callable[..., Any] = previous
            ) -> None:
                loop.call_soon_threadsafe(self.drain)
                previous(number, frame)

            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                signal.signal(signum, handler)

    async def stop(self) -> None:
        self._stopping = True
        self.drain()
        if self._task:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 6)
            except TimeoutError:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
        for task in (self._pings, self._membership_checks):
            if task:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self.send_watch.stop()
        if self._syncing:  # the drained streams' entries go with them
            await asyncio.gather(self._syncing, return_exceptions=True)
        await self._redis.aclose()

    async def _ping_quiet_streams(self) -> None:
        """Every LIVE_PING_SECONDS, a ping to each stream that was offered nothing since the last
        round, so proxies and clients see it is alive: one timer for the process, where a timeout
        around every stream's wait cost each event a timer per stream."""
        while True:
            await asyncio.sleep(settings.live_ping_seconds)
            for subscribers in self.by_user.values():
                for subscriber in subscribers:
                    if subscriber.quiet:
                        subscriber.offer(PING)
                    subscriber.quiet = True

    async def _end_streams_whose_orgs_changed(self) -> None:
        """Every LIVE_MEMBERSHIP_CHECK_SECONDS, end the streams whose user's organizations are no longer
        those they opened with; their clients reconnect with the current ones. A membership change
        ends them at once through Redis (`end_live_streams`): this is for the message lost while Redis
        was down, and for a stream that read its organizations just before a change and subscribed
        just after the message went by. One query for all the process's streams."""
        while True:
            await asyncio.sleep(settings.live_membership_check_seconds)
            streams = [s for subscribers in self.by_user.values() for s in subscribers if not s.closing]
            if not streams:
                continue
            try:
                current = await run_in_threadpool(_org_ids_of, sorted({s.user_id for s in streams}))
            except outages.DATABASE_ERRORS as exc:
                outages.database.failed(exc, trip_breaker=False)
                continue
            for stream in streams:
                if stream.org_ids != current.get(stream.user_id, frozenset()):
                    stream.close()

    async def _run(self) -> None:
        delay = 0.1
        while not self._stopping:
            client = async_redis()
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CHANNEL)
                await self._catch_up()  # after subscribing: nothing can fall between the two
                self.connected.set()
                outages.broker.ok()
                delay = 0.1
                await self._listen(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis or the database gone, or a bad message: start over
                outage = outages.outage_of(exc)
                if outage is not None:
                    outage.failed(exc, trip_breaker=False)  # said once per outage, not per retry
                else:
                    log.warning("live hub stopped (%r); resubscribing in %.1fs", exc, delay)
            finally:
                self.connected.clear()
                await pubsub.aclose()
                await client.aclose()
            if not self._stopping:
                await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)  # short: notifications wait for it

    async def _listen(self, pubsub: Any) -> None:
        """Handle messages; when it is quiet, ping, and give up on a connection that stays silent
        (a half-open TCP connection would otherwise keep the hub waiting for hours)."""
        interval = settings.live_ping_seconds
        last_heard = last_ping = time.monotonic()
        # Short reads, so stop() is noticed at once: cancelling a redis-py read with a timeout can hang.
        while not self._stopping:
            message = await pubsub.get_message(timeout=0.2)
            now = time.monotonic()
            if message is None:
                if now - last_heard > 3 * interval:
                    raise ConnectionError(f"no answer from Redis for {3 * interval:.0f}s")
                if now - last_ping > interval:
                    await pubsub.ping()
                    last_ping = now
                continue
            last_heard = now
            if message["type"] == "message":
                await self._handle(json.loads(message["data"]))

    # --- dispatch ------------------------------------------------------------------------------

    async def _catch_up(self, up_to: int | None = None) -> None:
        """Dispatch from the database every notification after the cursor (up to `up_to`)."""
        while up_to is None or self.cursor < up_to:
            rows = await run_in_threadpool(_published_since, self.cursor)
            if not rows:
                return
            for recipient_id, payload in rows:
                self._dispatch(recipient_id, payload)

    async def _handle(self, message: dict[str, Any]) -> None:
        kind = message["kind"]
        if kind == "notification":
            seq = message["notification"]["seq"]
            if seq <= self.cursor:
                return  # already dispatched, from the database
            if seq > self.cursor + 1:
                await self._catch_up(up_to=seq)  # a message went missing: fetch the gap
            if seq == self.cursor + 1:
                self._dispatch(message["recipient_id"], message["notification"])
        elif kind == "tick":
            if message["seq"] > self.cursor:
                await self._catch_up(up_to=message["seq"])
        elif kind == "unread":
            for subscriber in self.by_user.get(message["user_id"], ()):
                subscriber.offer(message)
        elif kind == "revoke":
            for subscriber in list(self.by_user.get(message["user_id"], ())):
                subscriber.close()
        elif kind == "close_streams":
            for subscriber in list(self.by_user.get(message["user_id"], ())):
                if subscriber.id in message["stream_ids"]:
                    subscriber.close(message["reason"])

    def _dispatch(self, recipient_id: int | None, payload: dict[str, Any]) -> None:
        self.cursor = payload["seq"]
        targets = (
            self.by_user.get(recipient_id, ()) if recipient_id else self.by_org.get(payload["org_id"], ())
        )
        if not targets:
            return
        # Encoded here, once for all its subscribers: per subscriber, JSON-encoding it was the largest
        # part of a broadcast's cost.
        event = {"kind": "notification", "notification": payload, "json": to_json(payload)}
        for subscriber in targets:
            subscriber.offer(event)

    # --- subscribers ---------------------------------------------------------------------------

    def subscribe(self, user_id: int, org_ids: frozenset[int]) -> Subscriber:
        subscriber = Subscriber(user_id, org_ids)
        if self._draining:
            subscriber.close()
        self.by_user.setdefault(user_id, set()).add(subscriber)
        for org_id in org_ids:
            self.by_org.setdefault(org_id, set()).add(subscriber)
        return subscriber

    def limit_streams(self, subscriber: Subscriber) -> None:
        """Keep the user's newest STREAMS_PER_USER streams open, closing the oldest beyond them: at once
        among this process's streams, over all processes once the stream is listed (LIST_DELAY)."""
        limit = settings.streams_per_user
        mine = sorted(self.by_user.get(subscriber.user_id, ()), key=lambda s: s.opened)
        for oldest in mine[: max(0, len(mine) - limit)]:  # this process's own share, Redis or not
            oldest.close(TOO_MANY_STREAMS)
        if not self.connected.is_set():
            return  # Redis is unreachable (or not yet subscribed): per process only
        self._to_list.append(subscriber)
        self._sync_stream_lists_soon()

    def _sync_stream_lists_soon(self) -> None:
        if self._syncing is None:
            self._syncing = asyncio.create_task(self._sync_stream_lists())

    async def _sync_stream_lists(self) -> None:
        """Every LIST_DELAY while there is work: list the streams opened since, in one script call,
        have every process close the streams that trimmed off, and remove the streams that ended.
        One call per stream opened took 11 % of the CPU opening one."""
        try:
            while self._to_list or self._to_forget:
                await asyncio.sleep(LIST_DELAY)
                opened, ended = self._to_list, self._to_forget
                self._to_list, self._to_forget = [], []
                both = set(opened) & set(ended)  # opened and ended in one round: nothing to tell Redis
                await self._list([s for s in opened if s not in both and not s.closing])
                await self._forget([s for s in ended if s not in both])
        finally:
            self._syncing = None

    async def _list(self, batch: list[Subscriber]) -> None:
        if not batch:
            return
        args: list[Any] = [settings.streams_per_user, STREAM_LIST_SECONDS]
        for subscriber in batch:
            args += [subscriber.opened, subscriber.id]
        try:
            evicted = await self._list_streams(keys=[_streams_key(s.user_id) for s in batch], args=args)
            for subscriber, stream_ids in zip(batch, evicted, strict=True):
                if stream_ids:
                    message = {
                        "kind": "close_streams",
                        "user_id": subscriber.user_id,
                        "stream_ids": [stream_id.decode() for stream_id in stream_ids],
                        "reason": TOO_MANY_STREAMS,
                    }
                    await self._redis.publish(CHANNEL, json.dumps(message))
        except redis.RedisError as exc:
            log.warning("%d new streams limited in this process only: %r", len(batch), exc)

    async def _forget(self, batch: list[Subscriber]) -> None:
        if not batch:
            return
        with contextlib.suppress(redis.RedisError):  # an entry left behind is trimmed first
            async with self._redis.pipeline(transaction=False) as pipe:
                for subscriber in batch:
                    pipe.zrem(_streams_key(subscriber.user_id), subscriber.id)
                await pipe.execute()

    def unsubscribe(self, subscriber: Subscriber) -> None:
        for index, key in [
            (self.by_user, subscriber.user_id),
            *((self.by_org, o) for o in subscriber.org_ids),
        ]:
            members = index.get(key)
            if members is not None:
                members.discard(subscriber)
                if not members:
                    del index[key]
        if self.connected.is_set():  # off the stream's path
            self._to_forget.append(subscriber)
            self._sync_stream_lists_soon()


# For each new stream (KEYS[i], its user's set; ARGV[2i+1], ARGV[2i+2]: when it opened, its id): list
# it, trim the set to the newest ARGV[1] and return the ids trimmed off. Atomic, in one command.
_LIST_STREAMS = """
local last = -tonumber(ARGV[1]) - 1
local evicted = {}
for i, key in ipairs(KEYS) do
    redis.call('ZADD', key, ARGV[2 * i + 1], ARGV[2 * i + 2])
    evicted[i] = redis.call('ZRANGE', key, 0, last)
    if #evicted[i] > 0 then redis.call('ZREMRANGEBYRANK', key, 0, last) end
    redis.call('EXPIRE', key, ARGV[2])
end
return evicted
"""


def _streams_key(user_id: int) -> str:
    return f"herald:streams:{user_id}"


def _org_ids_of(user_ids: list[int]) -> dict[int, frozenset[int]]:
    """The organizations of each user, in chunks of a statement's size."""
    org_ids: dict[int, set[int]] = {}
    with SessionLocal() as session:
        for start in range(0, len(user_ids), 5000):
            chunk = user_ids[start : start + 5000]
            for user_id, org_id in session.execute(_MEMBERSHIPS, {"user_ids": chunk}):
                org_ids.setdefault(user_id, set()).add(org_id)
    return {user_id: frozenset(orgs) for user_id, orgs in org_ids.items()}


_MEMBERSHIPS = select(Membership.user_id, Membership.org_id).where(
    Membership.user_id.in_(bindparam("user_ids", expanding=True))
)


def _last_seq() -> int:
    with SessionLocal() as session:
        return last_seq(session)


def _published_since(after_seq: int) -> list[tuple[int | None, dict[str, Any]]]:
    with SessionLocal() as session:
        return NotificationService.published_since(session, after_seq)


@dataclass(frozen=True)
class StreamStart:
    """What a stream starts from, read in the same database visit that authenticates it: one
    thread-pool hop and one session per connection instead of three."""

    user_id: int
    org_ids: frozenset[int]
    unread: int
    watermark: int  # the highest seq given out when `unread` was counted


def stream_start(session: Session, user_id: int, fingerprint: str | None) -> StreamStart | None:
    """What the user's stream starts from; None if the user no longer exists, or their password
    changed since the token (`fingerprint`) was issued."""
    snapshot = NotificationService.stream_snapshot(session, user_id)
    if snapshot is None:
        return None
    password_hash, *start = snapshot
    return StreamStart(user_id, *start) if fingerprint == password_fingerprint(password_hash) else None


_JSON = json.JSONEncoder(separators=(",", ":"))  # one: json.dumps with options builds one per call


def to_json(data: Any) -> str:
    return _JSON.encode(data)  # one line: JSON never contains a newline


def event_json(event: dict[str, Any]) -> str:
    """An event as one JSON object (a WebSocket frame), reusing its data's encoding when it has one."""
    head = to_json({k: v for k, v in event.items() if k not in ("data", "json")})
    if "data" not in event:
        return head
    return f'{head[:-1]},"data":{event.get("json") or to_json(event["data"])}}}'


async def events(hub: LiveHub, start: StreamStart, since: int | None) -> AsyncIterator[list[dict[str, Any]]]:
    """The event stream of one client, shared by SSE and WebSocket, in batches sent together.

    Yields {"event": "notification", "id": seq, "data": {...}, "json": data encoded}, {"event":
    "unread_count", "data": {"count": n}} and, from the hub, {"event": "ping"}; ends when
    the client must reconnect (it fell behind, or the server is shutting down). A notification and
    the count it changes come in one batch: one write to the client instead of two.
    """
    user_id, unread, watermark = start.user_id, start.unread, start.watermark
    subscriber = hub.subscribe(user_id, start.org_ids)
    # The snapshot was taken before subscribing: what the hub dispatched after it (up to here) never
    # reaches this subscriber, so it is replayed from the database below, as a resuming client's is.
    dispatched_before = hub.cursor
    try:
        hub.limit_streams(subscriber)
        if since is not None and since > watermark:
            # Past every seq given out: a position this database never had. Resuming from it would
            # skip every notification up to it, so the stream starts afresh instead.
            yield [{"event": "reset", "data": {"reason": UNKNOWN}}]
            since = None
        # Only a resuming client asks for the past: new streams (most connects) skip this lookup.
        if since is not None and since < await run_in_threadpool(_purged_through):
            # What it asks for may be gone: replaying the rest would hide that. The client refetches
            # its inbox (GET /api/notifications) and goes on from the id of the next event.
            yield [{"event": "reset", "data": {"reason": TOO_OLD}}]
            since = None
        sent_up_to = since if since is not None else watermark
        counted_through = watermark  # `unread` counts the unread notifications up to this seq

        def deliver(payload: dict[str, Any], encoded: str | None = None) -> list[dict[str, Any]]:
            nonlocal unread
            out = [{"event": "notification", "id": payload["seq"], "data": payload, "json": encoded}]
            if payload["seq"] > counted_through:  # each seq is delivered once, in order
                unread += 1
                # Its JSON written here: encoding {"count": n} was 8 % of a broadcast's CPU (py-spy).
                count_json = f'{{"count":{unread}}}'
                out.append({"event": "unread_count", "data": {"count": unread}, "json": count_json})
            return out

        # Carrying an id, so even a client that gets no notification before it reconnects resumes
        # from here (EventSource sends it back as Last-Event-ID) instead of from "now".
        yield [{"event": "unread_count", "id": sent_up_to, "data": {"count": unread}}]
        if since is not None or dispatched_before > watermark:  # replay what was missed, page by page
            while True:
                missed = await run_in_threadpool(_missed, user_id, sent_up_to)
                if not missed:
                    break
                for payload in missed:
                    sent_up_to = payload["seq"]
                    yield deliver(payload)
        while not (subscriber.lagging or subscriber.closing):
            message = await subscriber.next_event()
            if subscriber.lagging or message["kind"] == "close":
                break
            if message["kind"] == "ping":
                yield [{"event": "ping"}]
            elif message["kind"] == "notification":
                payload = message["notification"]
                if payload["seq"] <= sent_up_to:
                    continue  # already replayed from the database
                sent_up_to = payload["seq"]
                yield deliver(payload, message["json"])
            elif message["kind"] == "unread":
                # Up to the highest seq given out, which is past all this stream delivered: what it
                # delivers after counts on top, as at the start (read state included up to there).
                unread, counted_through = await run_in_threadpool(_unread_snapshot, user_id)
                yield [{"event": "unread_count", "data": {"count": unread}}]
        if subscriber.reason:
            yield [{"event": "closed", "data": {"reason": subscriber.reason}}]
    finally:
        hub.unsubscribe(subscriber)


def _purged_through() -> int:
    """Every seq up to here may have been deleted by retention."""
    with SessionLocal() as session:
        return session.scalar(select(NotificationSequence.purged_through)) or 0


def _unread_snapshot(user_id: int) -> tuple[int, int]:
    with SessionLocal() as session:
        return NotificationService.unread_snapshot(session, user_id)


def _missed(user_id: int, after_seq: int) -> list[dict[str, Any]]:
    with SessionLocal() as session:
        return [p for _r, p in NotificationService.published_since(session, after_seq, user_id=user_id)]
