"""Real child processes for the tests and benchmarks: Celery worker and beat, an API server, the SMTP sink.

Each runs in its own process group, so `kill()` takes the whole tree down at once, as a crash would.
"""

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from src.devserver.redis_server import die_with_parent, free_port

BACKEND_DIR = Path(__file__).resolve().parents[2]


class ManagedProcess:
    def __init__(self, command: list[str], env: dict[str, str], logfile: Path) -> None:
        self.command = command
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.logfile = logfile
        self.process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def is_ready(self, log_since_start: bytes) -> bool:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 30.0) -> "ManagedProcess":
        self.spawn()
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            if self.ready():
                return self
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"{self.command[:5]} did not become ready; see {self.logfile}")

    def spawn(self) -> None:
        """Start the process without waiting for it (`ready()` tells), as a supervisor restarts several
        at once: one that waits for a dependency must not hold up the others."""
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.logfile.stat().st_size if self.logfile.exists() else 0
        with self.logfile.open("ab") as log:
            self.process = subprocess.Popen(
                self.command, cwd=BACKEND_DIR, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=die_with_parent,
            )  # fmt: skip

    def ready(self) -> bool:
        with self.logfile.open("rb") as log:
            log.seek(self._log_offset)
            return self.is_ready(log.read())

    def _signal_group(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signum)

    def stop(self, timeout: float = 20.0) -> None:
        """Graceful shutdown (SIGTERM): finish what is under way."""
        if self.process is None:
            return
        self._signal_group(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self.process = None

    def kill(self) -> None:
        """SIGKILL the process and its children at once: a crash, mid-whatever."""
        if self.process is None:
            return
        self._signal_group(signal.SIGKILL)
        self.process.wait()
        self.process = None


class CeleryWorker(ManagedProcess):
    def __init__(self, env: dict[str, str], logfile: Path, concurrency: int = 2) -> None:
        self.concurrency = concurrency
        self.name = f"herald-{uuid.uuid4().hex[:8]}"
        command = [
            sys.executable, "-m", "celery", "-A", "src.celery_app", "worker",
            "--loglevel=info", f"--concurrency={concurrency}", "--pool=prefork",
            "--queues=emails,notifications,default", f"--hostname={self.name}@%h",
            "--without-gossip", "--without-mingle",
        ]  # fmt: skip
        super().__init__(command, env, logfile)

    def is_ready(self, log_since_start: bytes) -> bool:
        return b" ready." in log_since_start

    def wait_until_connected(self, timeout: float = 30.0) -> None:
        """Wait until the worker answers a ping through the broker. After losing Redis it reconnects
        with a growing back-off (2 s, 4 s, ...), and tasks sent meanwhile wait in the queue."""
        from src.celery_app import app

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with app.connection_for_write() as connection:  # a fresh one: Redis may have restarted
                try:
                    replies = app.control.ping(timeout=1.0, limit=1, connection=connection)
                except connection.connection_errors:
                    time.sleep(0.5)
                    continue
            if any(name.startswith(f"{self.name}@") for reply in replies for name in reply):
                return
        raise RuntimeError(f"the worker did not answer a ping within {timeout:.0f}s; see {self.logfile}")


# What one API process holds for any number of clients, as deploy/systemd/herald-api.service runs it.
# The parser is httptools with h11's bound (src/http_protocol.py): a request line or header block past
# 16 KB is refused. --limit-concurrency counts open connections, streams included (a process serves
# about a thousand): past it, requests answer 503 instead of piling up. Idle keep-alive connections
# close after 5 s. uvicorn has no timeout for a connection that sends nothing or trickles its
# headers: the reverse proxy must (see the README).
# --log-config: text or JSON lines (LOG_FORMAT) with request ids, from the first line (src/logs.py).
UVICORN_LIMITS = [
    "--http=src.http_protocol:BoundedHttpTools", "--limit-concurrency=2000",
    "--timeout-keep-alive=5", "--backlog=2048", "--log-config=log_config.json",
]  # fmt: skip


# The client's address (rate limits count per address) is taken from X-Forwarded-For only when the
# connection comes from the proxy in front (deploy/nginx/herald.conf, on the same machine); set the
# proxy's address instead where it runs elsewhere.
UVICORN_PROXY = ["--proxy-headers", "--forwarded-allow-ips=127.0.0.1"]


class ApiServer(ManagedProcess):
    def __init__(self, env: dict[str, str], logfile: Path, port: int, *options: str) -> None:
        """`options` go to uvicorn after UVICORN_LIMITS and UVICORN_PROXY, so they can override one."""
        self.port = port
        command = [
            sys.executable, "-m", "uvicorn", "src.main:app", "--host=127.0.0.1", f"--port={port}",
            *UVICORN_LIMITS, *UVICORN_PROXY, *options,
        ]  # fmt: skip
        super().__init__(command, env, logfile)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def is_ready(self, log_since_start: bytes) -> bool:
        if b"Application startup complete" not in log_since_start:
            return False
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as reply:
            return reply.status == 200
        return False


class CeleryBeat(ManagedProcess):
    """The periodic jobs (email queue processor, notification publisher): exactly one per deployment."""

    def __init__(self, env: dict[str, str], logfile: Path, schedule: Path) -> None:
        command = [
            sys.executable, "-m", "celery", "-A", "src.celery_app", "beat", "--loglevel=info",
            f"--schedule={schedule}",
        ]  # fmt: skip
        super().__init__(command, env, logfile)

    def is_ready(self, log_since_start: bytes) -> bool:
        return b"beat: Starting" in log_since_start


class SmtpSinkProcess(ManagedProcess):
    """The SMTP sink in its own process, as a mail server is: it can crash, and comes back on the same
    port, appending to the same journal (one JSON line per accepted message)."""

    def __init__(self, logfile: Path, journal: Path) -> None:
        self.port = free_port()
        self.journal = journal
        command = [
            sys.executable, "-m", "src.devserver.smtp_sink", "--port", str(self.port),
            "--journal", str(journal),
        ]  # fmt: skip
        super().__init__(command, {}, logfile)

    def is_ready(self, log_since_start: bytes) -> bool:
        return b"SMTP sink listening" in log_since_start


class Flower(ManagedProcess):
    """Flower as deploy/systemd runs it, through start_celery_flower.sh, on 127.0.0.1:`port`."""

    def __init__(self, env: dict[str, str], logfile: Path, port: int) -> None:
        self.port = port
        env = {**env, "FLOWER_ADDRESS": "127.0.0.1", "FLOWER_PORT": str(port)}
        super().__init__([str(BACKEND_DIR / "start_celery_flower.sh")], env, logfile)

    def is_ready(self, log_since_start: bytes) -> bool:
        return b"Visit me at" in log_since_start
