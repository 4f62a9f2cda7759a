"""Real child processes for the tests and benchmarks: a Celery worker, an API server.

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

from src.devserver.redis_server import die_with_parent

BACKEND_DIR = Path(__file__).resolve().parents[2]


class ManagedProcess:
    def __init__(self, command: list[str], env: dict[str, str], logfile: Path) -> None:
        self.command = command
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.logfile = logfile
        self.process: subprocess.Popen[bytes] | None = None

    def is_ready(self, log_since_start: bytes) -> bool:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> "ManagedProcess":
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        offset = self.logfile.stat().st_size if self.logfile.exists() else 0
        with self.logfile.open("ab") as log:
            self.process = subprocess.Popen(
                self.command, cwd=BACKEND_DIR, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=die_with_parent,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            with self.logfile.open("rb") as log:
                log.seek(offset)
                if self.is_ready(log.read()):
                    return self
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"{self.command[:5]} did not become ready; see {self.logfile}")

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
        command = [
            sys.executable, "-m", "celery", "-A", "src.celery_app", "worker",
            "--loglevel=info", f"--concurrency={concurrency}", "--pool=prefork",
            "--queues=emails,notifications,default", f"--hostname=herald-{uuid.uuid4().hex[:8]}@%h",
            "--without-gossip", "--without-mingle",
        ]  # fmt: skip
        super().__init__(command, env, logfile)

    def is_ready(self, log_since_start: bytes) -> bool:
        return b" ready." in log_since_start


class ApiServer(ManagedProcess):
    def __init__(self, env: dict[str, str], logfile: Path, port: int) -> None:
        self.port = port
        command = [sys.executable, "-m", "uvicorn", "src.main:app", "--host=127.0.0.1", f"--port={port}"]
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
