"""`make soak`: Herald run as an operator runs it, under steady load and injected faults, measured.

All on 127.0.0.1 and started by the soak: a private PostgreSQL and Redis (AOF), the SMTP sink in its
own process, 2 API processes, 2 Celery workers and beat. The soak is their supervisor (systemd's
Restart=always). `soak_traffic` offers status changes at --rate, keeps 20 SSE streams and probes
/healthz. For --duration seconds a fault hits every --fault-min..--fault-max seconds, cycling through
every kind in shuffled order; then the soak waits (bounded) until the outbox is settled and every
stream has caught up, stops everything, and prints one JSON line. The exit status is 0 whatever the
numbers (this is a measurement); non-zero only when the harness itself failed.
"""

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg

from benchmarks.common import CpuMeter, percentile, read_journal
from benchmarks.soak_traffic import Stream, Traffic
from src.devserver.databases import migrate
from src.devserver.load import raised_rate_limits
from src.devserver.postgres_server import PrivatePostgres
from src.devserver.processes import ApiServer, CeleryBeat, CeleryWorker, SmtpSinkProcess
from src.devserver.redis_server import PrivateRedis, free_port

SETTINGS = {
    "SMTP_USE_TLS": "false", "EMAIL_QUEUE_INTERVAL": "5", "EMAIL_LEASE_SECONDS": "20",
    "EMAIL_BACKOFF_BASE_SECONDS": "1", "EMAIL_BACKOFF_MAX_SECONDS": "5",
    "NOTIFICATION_PUBLISH_INTERVAL": "2", "LIVE_PING_SECONDS": "2",
}  # fmt: skip
KINDS = ("worker", "beat", "api", "redis", "postgres", "smtp")
RESTART_AFTER = 1.0  # seconds before the supervisor starts an exited process again
START_TIMEOUT = 60.0  # seconds a restarted process may take to become ready
OUTAGE = {"redis": 5.0, "smtp": 5.0}  # seconds these stay down after their fault
AFTERMATH = 5.0  # seconds after a fault's window still counted as inside it
DRAIN_LIMIT = 180.0


@dataclass
class Fault:
    kind: str
    target: str
    start: float
    end: float | None = None  # when the target answers again

    def close(self) -> None:
        self.end = time.time()
        print(f"{self.target} answers again, {self.end - self.start:.1f}s after the fault", flush=True)


@dataclass
class Service:
    name: str
    server: Any  # a ManagedProcess, PrivateRedis or PrivatePostgres: .process, .start(), .stop(), .kill()
    down_since: float | None = None
    starting: float | None = None  # when it was spawned, until it is ready
    back_at: float = 0.0  # a planned outage: not restarted before
    fault: Fault | None = None

    @property
    def up(self) -> bool:
        return self.server.process is not None and self.server.process.poll() is None


class Supervisor:
    """Restart=always for the whole deployment: whatever exits is started again ~1 s later (after a
    fault's planned outage); a fault's window closes once its process answers again."""

    def __init__(self, services: list[Service]) -> None:
        self.services = {service.name: service for service in services}
        self.faults: list[Fault] = []
        self.unplanned: list[str] = []  # exits no fault caused, e.g. a worker giving up on Redis
        self.cpu = CpuMeter()
        self.next_cpu_sample = 0.0

    def sample_cpu(self) -> None:
        """Each role's CPU (api-1 and api-2 are "api"), once a second: what a change costs, and where."""
        if time.time() < self.next_cpu_sample:
            return
        self.next_cpu_sample = time.time() + 1.0
        roles: dict[str, list[int]] = {}
        for name, service in self.services.items():
            if service.up:
                roles.setdefault(name.split("-")[0], []).append(service.server.process.pid)
        self.cpu.sample(roles)

    def tick(self) -> None:
        """One round over every process, waiting for none that is coming up (PostgreSQL and Redis do start
        synchronously: they depend on nothing and take well under a second)."""
        self.sample_cpu()
        for service in self.services.values():
            now, server = time.time(), service.server
            if service.starting is not None:  # spawned, not ready yet
                if service.up and not server.ready():
                    if now - service.starting < START_TIMEOUT:
                        continue
                    print(f"{service.name} not ready after {START_TIMEOUT:.0f}s; restarting it", flush=True)
                    server.kill()
                service.starting = None
                if not service.up:
                    service.down_since = now
                    continue
            elif not service.up:
                if service.down_since is None:
                    service.down_since = now
                    if service.fault is None:
                        self.unplanned.append(service.name)
                        print(f"{service.name} exited by itself; restarting it", flush=True)
                if now - service.down_since < RESTART_AFTER or now < service.back_at:
                    continue
                if hasattr(server, "spawn"):  # a ManagedProcess
                    server.spawn()
                    service.starting = now
                    continue
                try:
                    server.start()
                except RuntimeError as exc:
                    print(f"{service.name} did not come back ({exc}); trying again", flush=True)
                    continue
            service.down_since = None
            if service.fault is not None:
                service.fault.close()
                service.fault = None

    def inject(self, kind: str, rng: random.Random) -> Fault:
        service = self.services[rng.choice([name for name in self.services if name.startswith(kind)])]
        fault = Fault(kind, service.name, time.time())
        self.faults.append(fault)
        print(f"fault: {kind} ({service.name})", flush=True)
        service.fault, service.down_since = fault, fault.start
        service.back_at = fault.start + OUTAGE.get(kind, 0.0)
        if kind == "postgres":
            with contextlib.suppress(RuntimeError):  # if it does not come back, tick() goes on starting it
                service.server.restart()  # fast shutdown, start, return once it answers
        else:
            (service.server.stop if kind == "smtp" else service.server.kill)()
        self.tick()
        return fault

    @property
    def faulting(self) -> bool:
        return any(fault.end is None for fault in self.faults)


def start_deployment(stack: ExitStack, workdir: Path) -> tuple[Supervisor, list[str], Path]:
    """Everything Herald runs on and as, each process registered for stopping; (supervisor, API URLs,
    sink journal)."""
    postgres = PrivatePostgres(str(workdir)).start()
    stack.callback(postgres.stop)
    aof = ("--appendonly", "yes", "--appendfsync", "everysec")
    redis = PrivateRedis(workdir=str(workdir), extra_args=aof).start()
    stack.callback(redis.stop)
    sink = SmtpSinkProcess(workdir / "smtp.log", workdir / "sink.jsonl")
    env = {**SETTINGS, **raised_rate_limits(), "DATABASE_URL": postgres.url, "REDIS_URL": redis.url}
    env.update(SMTP_HOST="127.0.0.1", SMTP_PORT=str(sink.port))
    os.environ.update(env)  # this process seeds and checks the same database
    migrate(postgres.url)
    apis = [ApiServer(env, workdir / f"api-{i}.log", free_port()) for i in (1, 2)]
    children = {
        "smtp": sink,
        "api-1": apis[0],
        "api-2": apis[1],
        "beat": CeleryBeat(env, workdir / "beat.log", workdir / "beat-schedule"),
    }
    children.update(
        {f"worker-{i}": CeleryWorker(env, workdir / f"worker-{i}.log", concurrency=2) for i in (1, 2)}
    )
    for child in children.values():
        stack.callback(child.stop)
        child.start(timeout=60)
    services = [Service("postgres", postgres), Service("redis", redis)]
    services += [Service(name, child) for name, child in children.items()]
    return Supervisor(services), [api.url for api in apis], sink.journal


def seed(api: str) -> tuple[dict[int, str], dict[int, str]]:
    """10 users (inserted directly: argon2 per user is not what we measure) in one organization, 50 tasks
    with an assignee and 2-3 watchers, through the API; (access token per user id, title per task id)."""
    from src.auth.models import User
    from src.auth.security import create_session_token, hash_password
    from src.db import SessionLocal, utcnow

    with SessionLocal() as session:
        password = hash_password("soak-password")
        users = [
            User(
                email=f"user{i}@soak.example",
                name=f"User {i}",
                password_hash=password,
                email_verified_at=utcnow(),
            )
            for i in range(10)
        ]
        session.add_all(users)
        session.commit()
    tokens = {
        user.id: create_session_token(user.id, user.password_hash, "access", timedelta(hours=12))
        for user in users
    }
    ids = list(tokens)
    with httpx.Client(base_url=api, timeout=30) as client:

        def post(path: str, body: dict[str, Any], user_id: int) -> dict[str, Any]:
            reply = client.post(path, json=body, headers={"Authorization": f"Bearer {tokens[user_id]}"})
            reply.raise_for_status()
            return reply.json()

        org = post("/api/orgs", {"name": "Soak"}, ids[0])["id"]
        for user in users[1:]:
            invitation = post(f"/api/orgs/{org}/members", {"email": user.email, "role": "member"}, ids[0])
            post(f"/api/invitations/{invitation['id']}/accept", {}, user.id)
        titles = {}
        for i in range(50):
            watchers = [ids[(i + k) % 10] for k in range(2, 4 + i % 2)]
            task = {"title": f"Task {i}", "assignee_id": ids[(i + 1) % 10], "watcher_ids": watchers}
            titles[post(f"/api/orgs/{org}/tasks", task, ids[i % 10])["id"]] = task["title"]
    return tokens, titles


def sql(query: str) -> list[Any]:
    """Rows from the soak's database, read as an operator would, behind the application's back."""
    with psycopg.connect(os.environ["DATABASE_URL"].replace("+psycopg", ""), connect_timeout=5) as conn:
        return conn.execute(query).fetchall()


def notifications_seen_by(streams: list[Stream]) -> list[set[int]]:
    """Per stream, the seqs it may see: published after it first connected, to its user or (every user
    is in the soak's one organization) to everyone."""
    rows = sql("SELECT seq, recipient_id FROM notifications WHERE seq IS NOT NULL")
    return [
        {seq for seq, to in rows if to in (None, s.user_id) and seq > s.first_id}
        if s.first_id is not None
        else set()
        for s in streams
    ]


def backlog(streams: list[Stream]) -> dict[str, int]:
    """What delivery still owes: outbox rows neither sent nor failed, notifications without a seq,
    streams that have not received the highest seq they may see."""
    [(emails, unpublished)] = sql(
        "SELECT (SELECT count(*) FROM email_queue WHERE status NOT IN ('sent', 'failed')),"
        " (SELECT count(*) FROM notifications WHERE seq IS NULL)"
    )
    seen = zip(streams, notifications_seen_by(streams), strict=True)
    behind = sum(1 for stream, seqs in seen if seqs and max(stream.received, default=0) < max(seqs))
    return {"emails_unsettled": emails, "notifications_unpublished": unpublished, "streams_behind": behind}


def progress(started: float, traffic: Traffic, supervisor: Supervisor) -> None:
    changes = traffic.load.changes
    errors = sum(1 for change in changes if change.outcome not in ("ok", "in flight"))
    print(
        f"[{time.time() - started:4.0f}s] offered {len(traffic.load.offers)} served "
        f"{sum(change.outcome == 'ok' for change in changes)} errors {errors} shed {traffic.load.shed} "
        f"faults {len(supervisor.faults)} ({', '.join(fault.target for fault in supervisor.faults)})",
        flush=True,
    )


def run_faults(supervisor: Supervisor, traffic: Traffic, args: argparse.Namespace, started: float) -> float:
    """Supervise and inject faults until --duration is over and the last fault has ended; its end."""
    rng = random.Random(args.seed)
    order: list[str] = []
    next_fault = started + rng.uniform(args.fault_min, args.fault_max)
    next_report = started + 10
    while time.time() < started + args.duration or supervisor.faulting:
        supervisor.tick()
        traffic.check()
        now = time.time()
        if next_fault <= now < started + args.duration and not supervisor.faulting:
            order = order or rng.sample(KINDS, len(KINDS))
            supervisor.inject(order.pop(), rng)
            next_fault += rng.uniform(args.fault_min, args.fault_max)  # a late fault does not delay the next
        if now >= next_report:
            progress(started, traffic, supervisor)
            next_report = now + 10
        time.sleep(0.2)
    return started + args.duration


def drain(supervisor: Supervisor, traffic: Traffic) -> float | None:
    """Wait until delivery owes nothing, supervising still; the seconds it took, None if it never did."""
    started = next_report = time.time()
    while time.time() < started + DRAIN_LIMIT:
        supervisor.tick()
        traffic.check()
        if traffic.load.done.is_set():
            try:
                owed = backlog(traffic.streams)
            except psycopg.Error as exc:
                owed = {"database_error": 1}
                print(f"drain: {exc.__class__.__name__}", flush=True)
            if not any(owed.values()):
                return time.time() - started
            if time.time() >= next_report:
                print(f"drain: {owed}", flush=True)
                next_report = time.time() + 10
        time.sleep(1)
    return None


def measure(
    supervisor: Supervisor, traffic: Traffic, started: float, load_end: float, journal: Path
) -> dict[str, Any]:
    """The JSON line: every figure from what the clients saw, the database and the sink's journal."""
    now = time.time()
    windows: list[list[float]] = []
    # The first seconds count as a fault's aftermath: every process is as cold as one just restarted
    # (its first requests connect, compile templates and statements), and they held the run's slowest.
    faults = [(f.start, (f.end or now) + AFTERMATH) for f in supervisor.faults]
    spans = [(started, started + AFTERMATH), *faults]
    for start, end in sorted(spans):
        if windows and start <= windows[-1][1]:
            windows[-1][1] = max(windows[-1][1], end)
        else:
            windows.append([start, end])

    def outside(start: float, end: float) -> bool:
        return all(end < a or start > b for a, b in windows)

    outside_s = load_end - started - sum(max(0.0, min(b, load_end) - max(a, started)) for a, b in windows)
    changes = traffic.load.changes
    events = sql("SELECT id, task_id, actor_id, kind, new_value FROM task_events ORDER BY id")
    people = {
        task: {reporter, assignee} - {None}
        for task, reporter, assignee in sql("SELECT id, reporter_id, assignee_id FROM tasks")
    }
    for task, user in sql("SELECT task_id, user_id FROM task_watchers"):
        people[task].add(user)
    emails = sql("SELECT dedupe_key, status, message_id FROM email_queue")

    committed: set[int] = set()  # request numbers that committed (each PATCH also renames the task)
    changed: set[int] = set()  # request numbers whose transaction changed the status
    latest: dict[int, int] = {}  # task -> the request number its current title carries
    expected_emails: set[str] = set()
    for event_id, task_id, actor_id, kind, new_value in events:
        if kind == "title_changed" and "#" in (new_value or ""):
            latest[task_id] = int(new_value.rsplit("#", 1)[1])
            committed.add(latest[task_id])
        elif kind == "status_changed":
            changed.update([latest[task_id]] if task_id in latest else [])
            expected_emails |= {f"task-event:{event_id}:user:{user}" for user in people[task_id] - {actor_id}}
    journal_ids = Counter(record["message_id"] for record in read_journal(journal))
    missing = len(expected_emails - {key for key, _status, _message_id in emails})
    unsent = sum(status != "sent" for _key, status, _message_id in emails)
    unreceived = sum(
        status == "sent" and message_id not in journal_ids for _key, status, message_id in emails
    )

    seen = notifications_seen_by(traffic.streams)
    gaps = sum(len(seqs - stream.received.keys()) for stream, seqs in zip(traffic.streams, seen, strict=True))
    duplicates = sum(len(times) - 1 for stream in traffic.streams for times in stream.received.values())
    deliveries = [(s.created[seq], times[0]) for s in traffic.streams for seq, times in s.received.items()]
    delays = [received - created for created, received in deliveries if outside(created, created)]
    quiet_delays = [received - created for created, received in deliveries if outside(created, received)]

    def rounded(value: float, digits: int = 1) -> float | None:
        return None if value != value else round(value, digits)  # NaN: nothing to measure

    latencies = [(c.end - c.start) * 1000 for c in changes if c.end and outside(c.start, c.end)]
    served = sum(c.outcome == "ok" and c.end <= load_end and outside(c.end, c.end) for c in changes)
    kinds = Counter(fault.kind for fault in supervisor.faults)
    return {
        "duration_s": round(load_end - started, 1),
        "outside_faults_s": round(outside_s, 1),
        "offered_per_s": round(sum(outside(t, t) for t in traffic.load.offers) / outside_s, 2),
        "served_per_s": round(served / outside_s, 2),
        "p50_ms_outside_faults": rounded(percentile(latencies, 0.5)),
        "p99_ms_outside_faults": rounded(percentile(latencies, 0.99)),
        "longest_unresponsive_s": round(traffic.probes.longest_unresponsive(), 1),
        "faults": len(supervisor.faults),
        "fault_kinds": dict(kinds),
        "longest_fault_s": round(max(((f.end or now) - f.start for f in supervisor.faults), default=0.0), 1),
        "fault_windows": [
            [f.target, round(f.start - started, 1), round((f.end or now) - f.start, 1)]
            for f in supervisor.faults
        ],
        "worker_kills": kinds["worker"],
        "unplanned_restarts": dict(Counter(supervisor.unplanned)),
        "requests": len(changes),
        "shed": traffic.load.shed,
        "errors": dict(Counter(c.outcome for c in changes if c.outcome != "ok")),
        "status_changes_committed": len(changed),
        "committed_despite_error": sum(c.outcome != "ok" and c.number in changed for c in changes),
        "acknowledged_but_missing": sum(c.outcome == "ok" and c.number not in committed for c in changes),
        "emails": len(emails),
        "emails_lost": missing + unsent + unreceived,
        "emails_lost_detail": {"rows_missing": missing, "not_sent": unsent, "sent_not_received": unreceived},
        "email_duplicates": sum(count - 1 for count in journal_ids.values()),
        "notifications_expected": sum(len(seqs) for seqs in seen),
        "notification_gaps": gaps,
        "notification_duplicates": duplicates,
        "notification_p99_delay_s": rounded(percentile(delays, 0.99), 2),  # created outside fault windows
        "notification_p99_delay_quiet_s": rounded(percentile(quiet_delays, 0.99), 2),  # and received outside
        "stream_connects": sum(stream.connects for stream in traffic.streams),
    }


def cpu_snapshot(supervisor: Supervisor) -> tuple[dict[str, float], float]:
    supervisor.next_cpu_sample = 0.0
    supervisor.sample_cpu()
    own = psutil.Process().cpu_times()  # the soak's clients and supervision, its children not included
    return supervisor.cpu.totals(), own.user + own.system


def cpu_per_change(
    supervisor: Supervisor, before: dict[str, float], own_before: float, changes: int
) -> dict[str, Any]:
    """Milliseconds of CPU per committed status change, per role, from the start of the load to the end
    of the drain: the whole cost of a change, its emails and notifications included."""
    after, own_after = cpu_snapshot(supervisor)
    per_change = {
        role: round((seconds - before.get(role, 0.0)) * 1000 / max(1, changes), 1)
        for role, seconds in sorted(after.items())
    }
    per_change["soak_clients"] = round((own_after - own_before) * 1000 / max(1, changes), 1)
    return {"cpu_ms_per_change": per_change, "cpu_ms_per_change_total": round(sum(per_change.values()), 1)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    with ExitStack() as stack:
        workdir = Path(args.workdir or tempfile.mkdtemp(prefix="herald-soak-"))
        workdir.mkdir(parents=True, exist_ok=True)
        if not args.workdir:
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        supervisor, apis, journal = start_deployment(stack, workdir)
        tokens, titles = seed(apis[0])
        cpu_before, own_before = cpu_snapshot(supervisor)
        started = time.time()
        traffic = Traffic(apis, tokens, titles, args.rate)
        thread = threading.Thread(target=traffic.run, args=(started + args.duration,), daemon=True)
        thread.start()
        stack.callback(thread.join, 30)
        stack.callback(traffic.stop.set)
        load_end = run_faults(supervisor, traffic, args, started)
        drain_s = drain(supervisor, traffic)
        traffic.stop.set()
        thread.join(30)
        traffic.check()
        result = measure(supervisor, traffic, started, load_end, journal)
        cpu = cpu_per_change(supervisor, cpu_before, own_before, result["status_changes_committed"])
        drained = {"drained": drain_s is not None, "drain_s": None if drain_s is None else round(drain_s, 1)}
        return {**result, **drained, "wall_s": round(time.time() - started, 1), **cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=300, help="seconds of load and faults (300)")
    parser.add_argument("--rate", type=float, default=30, help="status changes offered per second (30)")
    parser.add_argument("--fault-min", type=float, default=20, help="least seconds between faults (20)")
    parser.add_argument("--fault-max", type=float, default=40, help="most seconds between faults (40)")
    parser.add_argument("--seed", type=int, help="makes the order and targets of the faults repeatable")
    parser.add_argument("--workdir", help="keep logs and data here (default: a temporary directory, removed)")
    args = parser.parse_args()
    for signum in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: a shell starts background jobs ignoring it
        signal.signal(signum, signal.default_int_handler)
    try:
        result = run(args)
    except KeyboardInterrupt:
        raise SystemExit("interrupted; everything the soak started is stopped") from None
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
