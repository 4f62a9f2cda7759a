"""`make bench-api`: status changes at a paced rate against the 2-core deployment, reads as the baseline.

One API deployment as deploy/systemd runs it on 2 cores (uvicorn `--workers 2`), a real Celery worker
and beat, the SMTP sink in its own process. Every task has a reporter, an assignee and a watcher, and
changes come round robin from the owner and those three, so each queues 2-3 emails and notifications.
Open loop, as users are: request k is due at start + k/rate whatever earlier ones are doing, and its
latency counts from then, so a stall is not hidden by the client waiting (no coordinated omission).
After 2 s of each kind as a warm-up, not measured:
1. reads (`GET /api/tasks/{id}`: authentication, one query, the same HTTP stack) at the offered rate:
   the same-run baseline, since machines differ ~3x while ratios hold;
2. status changes at the offered rate (default 100/s) for the same duration;
3. status changes ramped from rate/8, x1.25 every STEP_SECONDS, until p99 passes P99_BOUND_MS or a request
   fails; `max_requests_per_s` is the fastest step served within the bound;
then waits for every email and checks each expected one reached the sink exactly once.
The last line printed is one JSON object.
"""

import argparse
import asyncio
import json
import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import aiohttp
import psutil
import uvloop

from benchmarks.common import CpuMeter, percentile, prepare, read_journal, start_sink

STATUSES = ("in_progress", "in_review", "done")
MAX_IN_FLIGHT = 1000  # past this an offer is shed and counted as an error: the client's own bound
P99_BOUND_MS = 100.0  # max_requests_per_s: the fastest rate whose p99 stays within twice the target
STEP_SECONDS = 5.0
RAMP = 1.25
DRAIN_SECONDS = 120
API_WORKERS = 2  # deploy/systemd/herald-api.service: one uvicorn process per core


@dataclass
class Run:
    """One open-loop run: per request, (due time, seconds from due to answer); non-200s and shed offers."""

    rate: float
    started: float
    seconds: float
    latencies: list[tuple[float, float]]
    errors: int
    cpu_s: float
    cpu_by_component: dict[str, float]

    def p(self, fraction: float) -> float:
        return round(percentile([s for _, s in self.latencies], fraction) * 1000, 1)

    @property
    def served_per_s(self) -> float:
        return round(len(self.latencies) / self.seconds, 1)


class Deployment:
    """The API processes' CPU time (uvicorn's supervisor and its workers): what a request costs here."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)

    def pids(self) -> list[int]:
        return [p.pid for p in self.root.children(recursive=True)]

    def cpu_seconds(self) -> float:
        total = 0.0
        for process in [self.root, *self.root.children(recursive=True)]:
            times = process.cpu_times()
            total += times.user + times.system
        return total


# The benchmark's own processes by a word of their command line; PostgreSQL's server is found by name.
COMPONENTS = {
    "api": "uvicorn",
    "worker": "worker",
    "beat": "beat",
    "redis": "redis-server",
    "sink": "smtp_sink",
}


def components() -> dict[str, list[int]]:
    """Root pids per component: every process this benchmark started, and the PostgreSQL server's
    postmaster (its database is the only one in use while the benchmark runs)."""
    roots: dict[str, list[int]] = {name: [] for name in [*COMPONENTS, "postgres"]}
    for child in psutil.Process().children():
        command = " ".join(child.cmdline())
        name = next((name for name, word in COMPONENTS.items() if word in command), None)
        if name:
            roots[name].append(child.pid)
    for process in psutil.process_iter(["name", "ppid"]):
        parent_name = psutil.Process(process.info["ppid"]).name() if process.info["ppid"] else ""
        if process.info["name"] in ("postgres", "postmaster") and parent_name not in (
            "postgres",
            "postmaster",
        ):
            roots["postgres"].append(process.pid)
    return roots


def seed(n: int) -> tuple[list[str], list[int], set[int]]:
    """Owner, reporter, assignee and watcher, all confirmed, and n tasks; (their tokens, task ids, the ids
    of the three who hear of a change)."""
    from src.auth.models import User
    from src.auth.security import create_session_token
    from src.db import SessionLocal, utcnow
    from src.orgs.models import Membership, Organization, Role
    from src.tasks.models import Task

    with SessionLocal() as session:
        users = [
            User(email=f"u{i}@bench.example", name=f"User {i}", password_hash="-", email_verified_at=utcnow())
            for i in range(4)
        ]
        org = Organization(name="Bench")
        session.add_all([*users, org])
        session.flush()
        roles = [Role.owner, *[Role.member] * 3]
        session.add_all(
            Membership(org_id=org.id, user_id=u.id, role=r) for u, r in zip(users, roles, strict=True)
        )
        tasks = [
            Task(org_id=org.id, title=f"Task {i}", description="", reporter_id=users[1].id,
                 assignee_id=users[2].id, watchers=[users[3]])
            for i in range(n)
        ]  # fmt: skip
        session.add_all(tasks)
        session.commit()
        tokens = [create_session_token(u.id, u.password_hash, "access", timedelta(hours=2)) for u in users]
        return tokens, [t.id for t in tasks], {u.id for u in users[1:]}


class Load:
    """Paced requests over one connection pool; `sent` numbers changes across runs, so the k-th change of
    a task always moves it to a status other than its current one."""

    def __init__(
        self, client: aiohttp.ClientSession, tokens: list[str], task_ids: list[int], api: Deployment
    ) -> None:
        self.client, self.tokens, self.task_ids, self.api = client, tokens, task_ids, api
        self.sent = 0
        self.roots = components()

    def request(self, change: bool) -> tuple[str, str, dict | None, dict[str, str]]:
        k, n = self.sent, len(self.task_ids)
        self.sent += 1
        headers = {"Authorization": f"Bearer {self.tokens[k % len(self.tokens)]}"}
        body = {"status": STATUSES[(k // n) % len(STATUSES)]} if change else None
        return ("PATCH" if change else "GET"), f"/api/tasks/{self.task_ids[k % n]}", body, headers

    async def run(self, rate: float, seconds: float, change: bool) -> Run:
        latencies: list[tuple[float, float]] = []
        errors = 0
        in_flight: set[asyncio.Task[None]] = set()

        async def one(due: float, method: str, path: str, body: dict | None, headers: dict[str, str]) -> None:
            nonlocal errors
            try:
                async with self.client.request(method, path, json=body, headers=headers) as reply:
                    await reply.read()
                    ok = reply.status == 200
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            if ok:
                latencies.append((due, time.time() - due))
            else:
                errors += 1

        meter = CpuMeter()
        meter.sample(self.roots)
        components_before = meter.totals()
        cpu_before, started = self.api.cpu_seconds(), time.time()
        count = int(rate * seconds)
        for i in range(count):
            due = started + i / rate
            await asyncio.sleep(max(0.0, due - time.time()))
            if len(in_flight) >= MAX_IN_FLIGHT:
                errors += 1
                continue
            job = asyncio.create_task(one(due, *self.request(change)))
            in_flight.add(job)
            job.add_done_callback(in_flight.discard)
        await asyncio.gather(*in_flight)
        elapsed = max(seconds, time.time() - started)
        await asyncio.sleep(0.5)  # the relay's after-commit work belongs to this run
        meter.sample(self.roots)
        by_component = {name: cpu - components_before.get(name, 0.0) for name, cpu in meter.totals().items()}
        return Run(
            rate, started, elapsed, latencies, errors, self.api.cpu_seconds() - cpu_before, by_component
        )


def report(kind: str, run: Run) -> None:
    print(
        f"{kind:6} {run.rate:6.0f}/s offered: served {run.served_per_s}/s, p50 {run.p(0.5)} ms, "
        f"p99 {run.p(0.99)} ms, {run.errors} errors, API CPU {cpu_ms(run)} ms per request",
        flush=True,
    )


def cpu_ms(run: Run) -> float:
    return round(run.cpu_s / max(1, len(run.latencies)) * 1000, 2)


def cpu_ms_by_component(run: Run) -> dict[str, float]:
    """CPU per served request of every process involved, in ms: what the machine spends on one."""
    served = max(1, len(run.latencies))
    return {name: round(seconds / served * 1000, 2) for name, seconds in run.cpu_by_component.items()}


async def measure(url: str, api: Deployment, tokens: list[str], task_ids: list[int], rate: float,
                  seconds: float) -> tuple[Run, Run, list[Run]]:  # fmt: skip
    # aiohttp: on the same 2 cores as the deployment, httpx cost 1.3-1.4 ms of CPU per request and
    # aiohttp 0.5, and what the client spends is taken from the server being measured. Idle
    # connections are dropped before uvicorn's --timeout-keep-alive=5 closes them under a request.
    connector = aiohttp.TCPConnector(limit=MAX_IN_FLIGHT, keepalive_timeout=4)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as client:
        load = Load(client, tokens, task_ids, api)
        # Warm-up of both paths: connections, caches, and what a process does on a change's first use
        # (templates compiled, the broker connected, statements prepared), which put most slow
        # requests of a run in its first seconds.
        await load.run(rate, 2, change=True)
        await load.run(rate, 2, change=False)
        read = await load.run(rate, seconds, change=False)
        report("read", read)
        change = await load.run(rate, seconds, change=True)
        report("change", change)
        print("change CPU ms per request by process:", cpu_ms_by_component(change), flush=True)
        steps, step_rate = [], rate / 8
        while True:
            step = await load.run(step_rate, STEP_SECONDS, change=True)
            steps.append(step)
            report("ramp", step)
            if step.errors or step.p(0.99) > P99_BOUND_MS:
                return read, change, steps
            step_rate *= RAMP


def deliveries(journal: Path, expected: dict[str, str], deadline: float) -> tuple[list[dict], int]:
    """Wait until every expected Message-ID reached the sink (or the deadline); (journal, missing)."""
    while True:
        received = read_journal(journal)
        missing = len(set(expected.values()) - {r["message_id"] for r in received})
        if not missing or time.time() > deadline:
            return received, missing
        time.sleep(0.5)


def expected_emails(audience: set[int]) -> tuple[dict[str, str], int]:
    """Per status change committed, one email per audience member but its actor: (dedupe key -> Message-ID
    of the row queued for it, keys with no row)."""
    from sqlalchemy import select

    from src.db import SessionLocal
    from src.emails.models import EmailQueue
    from src.tasks.models import TaskEvent

    with SessionLocal() as session:
        events = session.execute(
            select(TaskEvent.id, TaskEvent.actor_id).where(TaskEvent.kind == "status_changed")
        )
        keys = {f"task-event:{e}:user:{u}" for e, actor in events for u in audience - {actor}}
        rows = {
            key: message_id
            for key, message_id in session.execute(select(EmailQueue.dedupe_key, EmailQueue.message_id))
        }
    return {key: rows[key] for key in keys if key in rows}, len(keys - rows.keys())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="tasks changed round robin (200)")
    parser.add_argument(
        "--rate", type=float, default=100, help="offered changes (and reads) per second (100)"
    )
    parser.add_argument("--duration", type=float, default=20, help="seconds of each offered run (20)")
    parser.add_argument("--database", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument(
        "--http", choices=["bounded", "h11", "httptools"], default="bounded",
        help="uvicorn's parser: bounded (httptools with a 16 KB header bound, as deployed), h11, httptools",
    )  # fmt: skip
    args = parser.parse_args()
    with ExitStack() as stack:
        workdir, _url = prepare(stack, args.database)
        port, journal = start_sink(stack, workdir)
        from src.devserver.processes import ApiServer, CeleryBeat, CeleryWorker
        from src.devserver.redis_server import free_port

        env = {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(port), "SMTP_USE_TLS": "false"}
        parser_option = [] if args.http == "bounded" else [f"--http={args.http}"]  # bounded: UVICORN_LIMITS
        children = [
            ApiServer(env, workdir / "api.log", free_port(), f"--workers={API_WORKERS}", *parser_option),
            CeleryWorker(env, workdir / "worker.log", concurrency=2),
            CeleryBeat(env, workdir / "beat.log", workdir / "beat-schedule"),
        ]
        for child in children:
            child.start(timeout=60)
            stack.callback(child.stop)
        api_server = children[0]
        assert isinstance(api_server, ApiServer) and api_server.process is not None
        api = Deployment(api_server.process.pid)
        print("API processes:", api.root.pid, api.pids(), flush=True)
        tokens, task_ids, audience = seed(args.n)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            read, change, steps = runner.run(
                measure(api_server.url, api, tokens, task_ids, args.rate, args.duration)
            )
        expected, not_queued = expected_emails(audience)
        received, missing = deliveries(journal, expected, time.time() + DRAIN_SECONDS)
    seen: dict[str, int] = {}
    for record in received:
        seen[record["message_id"]] = seen.get(record["message_id"], 0) + 1
    within = [s for s in steps if not s.errors and s.p(0.99) <= P99_BOUND_MS]
    last_at = max((r["at"] for r in received), default=change.started)
    summary = {
        "database": args.database,
        "http": args.http,
        "api_workers": API_WORKERS,
        "offered_per_s": args.rate,
        "requests_per_s": change.served_per_s,
        "p50_ms": change.p(0.5),
        "p99_ms": change.p(0.99),
        "errors": change.errors,
        "read_p50_ms": read.p(0.5),
        "read_p99_ms": read.p(0.99),
        "change_over_read_p99": round(change.p(0.99) / read.p(0.99), 2),
        "change_cpu_ms": cpu_ms(change),
        "read_cpu_ms": cpu_ms(read),
        "change_over_read_cpu": round(cpu_ms(change) / cpu_ms(read), 2),
        "change_cpu_ms_by_process": cpu_ms_by_component(change),
        "max_requests_per_s": max((s.served_per_s for s in within), default=0.0),
        "max_p99_bound_ms": P99_BOUND_MS,
        "emails": len(expected) + not_queued,
        "emails_per_s": round(len(expected) / max(last_at - change.started, 1e-9), 1),
        "lost": missing + not_queued,
        "duplicates": sum(count - 1 for count in seen.values()),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
