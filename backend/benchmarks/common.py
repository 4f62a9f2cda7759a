"""What every benchmark sets up: a private Redis, a fresh database, the SMTP sink in its own process.

Environment variables are set before `src` settings are read, so import `src` only after `prepare()`.
"""

import json
import os
import tempfile
from contextlib import ExitStack
from pathlib import Path

import psutil

from src.devserver.databases import DEFAULT_PG_ADMIN_URL, create_pg_database, drop_pg_database, migrate
from src.devserver.load import raised_rate_limits
from src.devserver.processes import SmtpSinkProcess
from src.devserver.redis_server import PrivateRedis


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def prepare(stack: ExitStack, database: str) -> tuple[Path, str]:
    """Private Redis, a migrated database and rate limits out of the way (they reach the API processes
    the benchmark starts); returns (work dir, database URL)."""
    workdir = Path(tempfile.mkdtemp(prefix="herald-bench-"))
    redis = PrivateRedis(workdir=str(workdir)).start()
    stack.callback(redis.stop)
    if database == "postgresql":
        url = create_pg_database(os.environ.get("BENCH_DATABASE_URL", DEFAULT_PG_ADMIN_URL), "herald_bench")
        stack.callback(drop_pg_database, url)
    else:
        url = f"sqlite:///{workdir / 'bench.db'}"
    os.environ.update(REDIS_URL=redis.url, DATABASE_URL=url, **raised_rate_limits())
    migrate(url)
    return workdir, url


def start_sink(stack: ExitStack, workdir: Path) -> tuple[int, Path]:
    """The SMTP sink as its own process (as a real mail server would be); returns (port, journal)."""
    journal = workdir / "sink.jsonl"
    journal.touch()
    sink = SmtpSinkProcess(workdir / "sink.log", journal).start()
    stack.callback(sink.stop)
    return sink.port, journal


def read_journal(journal: Path) -> list[dict]:
    with journal.open() as lines:
        return [json.loads(line) for line in lines if line.strip()]


class CpuMeter:
    """CPU seconds used by process trees that come and go (restarted by a supervisor, prefork children
    recycled): sampled often, each pid's last reading kept, so a process that exits loses at most one
    interval. Labels group trees: "api", "worker", "postgres"..."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, int, float], float] = {}  # (label, pid, create_time) -> cpu seconds

    def sample(self, roots: dict[str, list[int]]) -> None:
        for label, pids in roots.items():
            for pid in pids:
                try:
                    root = psutil.Process(pid)
                    tree = [root, *root.children(recursive=True)]
                except psutil.Error:
                    continue
                for process in tree:
                    try:
                        with process.oneshot():
                            times, created = process.cpu_times(), process.create_time()
                    except psutil.Error:
                        continue
                    self.seen[(label, process.pid, created)] = times.user + times.system

    def totals(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for (label, _pid, _created), seconds in self.seen.items():
            totals[label] = totals.get(label, 0.0) + seconds
        return totals
