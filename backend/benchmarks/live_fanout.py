"""`make bench-live`: N concurrent SSE clients on one API process, a few broadcasts, latency and memory.

Each client is a real HTTP connection to a real uvicorn process, authenticated with its own stream
token. We measure from the broadcast's commit (after which it is published) to each client's receipt,
the API process's memory growth per idle connection and how fast streams connect. The same clients
first measure the floor, benchmarks.live_floor (a bare server writing one pre-encoded event to every
connection), so Herald's figures come with the machine's own beside them. The last line printed is
one JSON object.
"""

import argparse
import asyncio
import gc
import json
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path

from benchmarks.common import percentile, prepare

ROUNDS = 5
Publish = Callable[[str], Awaitable[float]]  # sends a broadcast with this title; returns when it left


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Client:
    def __init__(self, port: int, token: str) -> None:
        self.port, self.token = port, token
        self.subscribed = asyncio.Event()
        self.received: dict[str, float] = {}  # notification title -> receipt time

    async def run(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(
            f"GET /api/notifications/stream?token={self.token} HTTP/1.1\r\nHost: bench\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        await writer.drain()
        event = ""
        try:
            while line := await reader.readline():
                text = line.decode().rstrip("\r\n")
                if text.startswith("event: "):
                    event = text[7:]
                elif text.startswith("data: ") and event == "unread_count":
                    self.subscribed.set()
                elif text.startswith("data: ") and event == "notification":
                    self.received[json.loads(text[6:])["title"]] = time.time()
        finally:
            writer.close()


async def measure(n: int, port: int, pid: int, tokens: list[str], publish: Publish) -> dict:
    """Connect N clients (in two halves, to see what one more idle connection costs), broadcast ROUNDS
    times, and time each receipt from the moment `publish` says the broadcast left."""
    clients = [Client(port, token) for token in tokens]
    half = n // 2
    rss = [rss_kb(pid)]
    tasks: list[asyncio.Task[None]] = []
    connect_s = 0.0
    for group in (clients[:half], clients[half:]):
        started = time.monotonic()
        tasks += [asyncio.create_task(c.run()) for c in group]
        for client in group:
            await asyncio.wait_for(client.subscribed.wait(), 300)
        connect_s += time.monotonic() - started
        await asyncio.sleep(2)  # let the connections go idle
        rss.append(rss_kb(pid))

    published: dict[str, float] = {}
    # No collections in this process while it measures: at 5,000 connections one of its own full
    # collections stopped every client for 190-260 ms, in whichever round (floor's or Herald's) it fell.
    gc.collect()
    gc.disable()
    try:
        for round_number in range(ROUNDS):
            title = f"broadcast {round_number}"
            published[title] = await publish(title)
            deadline = time.monotonic() + 60
            while sum(title in c.received for c in clients) < n and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
    finally:
        gc.enable()
    latencies = [
        (c.received[title] - at) * 1000
        for c in clients
        for title, at in published.items()
        if title in c.received
    ]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "received": len(latencies),
        "p50_ms": round(percentile(latencies, 0.5), 1),
        "p99_ms": round(percentile(latencies, 0.99), 1),
        "max_ms": round(max(latencies, default=float("nan")), 1),
        "p99_ms_by_round": [  # a slow first round (or a pause) shows here, not in the overall p99
            round(percentile([(c.received[t] - at) * 1000 for c in clients if t in c.received], 0.99), 1)
            for t, at in published.items()
        ],
        # The second half's growth: what one more idle connection costs, once the process is warm
        # (thread pool, database pool and caches filled by the first half).
        "kb_per_connection": round((rss[2] - rss[1]) / (n - half), 1),
        "kb_per_connection_incl_warmup": round((rss[2] - rss[0]) / n, 1),
        "connect_s": round(connect_s, 2),
        "connects_per_s": round(n / connect_s),
    }


async def measure_floor(n: int, workdir: Path) -> dict:
    """The same clients against benchmarks.live_floor, in its own process, on its own port."""
    from src.devserver.redis_server import free_port

    port = free_port()
    with (workdir / "floor.log").open("wb") as log:
        floor = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.live_floor", str(port),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log,
        )  # fmt: skip
    assert floor.stdin is not None and floor.stdout is not None
    await floor.stdout.readline()  # "floor ready"

    async def publish(title: str) -> float:
        sent = time.time()
        floor.stdin.write(f"{title}\n".encode())
        await floor.stdin.drain()
        return sent

    try:
        return await measure(n, port, floor.pid, [""] * n, publish)
    finally:
        floor.stdin.close()
        await floor.wait()


def run(n: int, database: str) -> dict:
    with ExitStack() as stack:
        workdir, url = prepare(stack, database)
        from src.auth.models import User
        from src.auth.security import create_session_token, hash_password
        from src.db import SessionLocal
        from src.devserver.processes import ApiServer
        from src.devserver.redis_server import free_port
        from src.notifications.service import NotificationService
        from src.orgs.models import Membership, Organization, Role

        with SessionLocal() as session:
            org = Organization(name="Bench")
            session.add(org)
            password = hash_password("bench-password")
            users = [
                User(email=f"user{i}@bench.example", name=f"User {i}", password_hash=password)
                for i in range(n)
            ]
            session.add_all(users)
            session.flush()
            session.add_all(Membership(org_id=org.id, user_id=u.id, role=Role.member) for u in users)
            session.commit()
            tokens = [create_session_token(u.id, password, "stream", timedelta(minutes=30)) for u in users]
            org_id = org.id

        floor = asyncio.run(measure_floor(n, workdir))
        # One stream per user, so STREAMS_PER_USER never closes one; uvicorn's connection cap (2,000 in
        # deployment, where a proxy spreads clients over processes) is lifted for the N streams.
        api = ApiServer(
            {"DATABASE_URL": url}, workdir / "api.log", free_port(), f"--limit-concurrency={n + 100}"
        ).start()
        stack.callback(api.stop)
        assert api.process is not None

        async def publish(title: str) -> float:
            def broadcast() -> float:
                with SessionLocal() as session:
                    NotificationService.broadcast(session, org_id, "announcement", title)
                    committed = time.time()
                    session.commit()  # publishes after commit
                    return committed

            return await asyncio.to_thread(broadcast)

        herald = asyncio.run(measure(n, api.port, api.process.pid, tokens, publish))
        return {
            "clients": n,
            "broadcasts": ROUNDS,
            "expected": n * ROUNDS,
            "all_received": herald["received"] == floor["received"] == n * ROUNDS,
            "p99_ms": herald["p99_ms"],
            "floor_p99_ms": floor["p99_ms"],
            "p99_vs_floor": round(herald["p99_ms"] / floor["p99_ms"], 2),
            "connects_per_s": herald["connects_per_s"],
            "floor_connects_per_s": floor["connects_per_s"],
            "kb_per_connection": herald["kb_per_connection"],
            "floor_kb_per_connection": floor["kb_per_connection"],
            "herald": herald,
            "floor": floor,
            "database": database,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="concurrent SSE clients (default 1000)")
    parser.add_argument("--database", choices=["postgresql", "sqlite"], default="postgresql")
    args = parser.parse_args()
    print(json.dumps(run(args.n, args.database)))


if __name__ == "__main__":
    main()
