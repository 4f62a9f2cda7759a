"""`make bench-api`: N simultaneous status changes on one API process, against a read in the same run.

Every task has an assignee, a reporter and two watchers, so each change writes its event, four emails
and four notifications. The baseline is N simultaneous `GET /api/tasks/{id}` on the same process
(authentication, one query, the same HTTP stack), so the ratio says what a change costs beyond the
floor of serving a request here, whatever the machine. Three rounds of each; medians are reported,
with the API process's CPU per request. The last line printed is one JSON object.
"""

import argparse
import asyncio
import json
import statistics
import time
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path

import httpx

from benchmarks.common import percentile, prepare

ROUNDS = 3
STATUSES = ("in_progress", "in_review", "done")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks


def seed(n: int) -> tuple[str, list[int]]:
    """A team of five and n watched tasks; (the owner's token, task ids)."""
    from src.auth.models import User
    from src.auth.security import create_token
    from src.db import SessionLocal
    from src.orgs.models import Membership, Organization, Role
    from src.tasks.models import Task

    with SessionLocal() as session:
        users = [User(email=f"u{i}@bench.example", name=f"User {i}", password_hash="-") for i in range(5)]
        org = Organization(name="Bench")
        session.add_all([*users, org])
        session.flush()
        roles = [Role.owner, *[Role.member] * 4]
        session.add_all(
            Membership(org_id=org.id, user_id=u.id, role=r) for u, r in zip(users, roles, strict=True)
        )
        tasks = [
            Task(org_id=org.id, title=f"Task {i}", description="", reporter_id=users[1].id,
                 assignee_id=users[2].id, watchers=users[3:])
            for i in range(n)
        ]  # fmt: skip
        session.add_all(tasks)
        session.commit()
        return create_token(users[0].id, "access", timedelta(hours=1)), [t.id for t in tasks]


async def burst(url: str, token: str, requests: list[tuple[str, str, dict | None]]) -> list[float]:
    """All requests at once; the seconds each took. Any answer but 200 fails the benchmark."""
    limits = httpx.Limits(max_connections=len(requests))
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits, headers=headers) as client:

        async def one(method: str, path: str, body: dict | None) -> float:
            started = time.monotonic()
            response = await client.request(method, path, json=body)
            if response.status_code != 200:
                raise RuntimeError(f"{method} {path}: {response.status_code} {response.text}")
            return time.monotonic() - started

        return await asyncio.gather(*(one(*request) for request in requests))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60, help="simultaneous requests (60)")
    parser.add_argument("--database", choices=["postgresql", "sqlite"], default="postgresql")
    args = parser.parse_args()
    with ExitStack() as stack:
        workdir, _url = prepare(stack, args.database)
        from src.devserver.processes import ApiServer
        from src.devserver.redis_server import free_port

        api = ApiServer({}, workdir / "api.log", free_port()).start()
        stack.callback(api.stop)
        assert api.process is not None
        token, task_ids = seed(args.n)
        results: dict[str, list[dict[str, float]]] = {"read": [], "change": []}
        for round_number in range(ROUNDS):
            status = STATUSES[round_number % len(STATUSES)]
            for kind, requests in (
                ("read", [("GET", f"/api/tasks/{i}", None) for i in task_ids]),
                ("change", [("PATCH", f"/api/tasks/{i}", {"status": status}) for i in task_ids]),
            ):
                cpu_before = cpu_seconds(api.process.pid)
                seconds = asyncio.run(burst(api.url, token, requests))
                time.sleep(0.5)  # the relay's after-commit work belongs to this burst
                cpu_ms = (cpu_seconds(api.process.pid) - cpu_before) / args.n * 1000
                stats = {"p50_s": percentile(seconds, 0.5), "max_s": max(seconds), "cpu_ms": cpu_ms}
                results[kind].append(stats)
                print(
                    f"round {round_number + 1} {kind:6}: "
                    + ", ".join(f"{k} {v:.3f}" for k, v in stats.items())
                )

    def median(kind: str, key: str) -> float:
        return round(statistics.median(r[key] for r in results[kind]), 3)

    summary = {
        "n": args.n,
        "database": args.database,
        **{f"{kind}_{key}": median(kind, key) for kind in results for key in ("p50_s", "max_s", "cpu_ms")},
    }
    summary["change_over_read_max"] = round(summary["change_max_s"] / summary["read_max_s"], 2)
    summary["change_over_read_cpu"] = round(summary["change_cpu_ms"] / summary["read_cpu_ms"], 2)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
