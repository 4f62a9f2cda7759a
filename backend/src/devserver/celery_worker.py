"""A real `celery worker` child process, for the tests and benchmarks: start, stop, or SIGKILL it."""

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from src.config import BACKEND_DIR


class CeleryWorker:
    def __init__(self, env: dict[str, str], logfile: Path, concurrency: int = 2) -> None:
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.logfile = logfile
        self.concurrency = concurrency
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> "CeleryWorker":
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        offset = self.logfile.stat().st_size if self.logfile.exists() else 0
        command = [
            sys.executable, "-m", "celery", "-A", "src.celery_app", "worker",
            "--loglevel=info", f"--concurrency={self.concurrency}", "--pool=prefork",
            "--queues=emails,notifications,default", f"--hostname=herald-{uuid.uuid4().hex[:8]}@%h",
            "--without-gossip", "--without-mingle",
        ]  # fmt: skip
        with self.logfile.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=BACKEND_DIR,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.logfile.open("rb") as log:
                log.seek(offset)
                if b" ready." in log.read():
                    return self
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"celery worker did not become ready; see {self.logfile}")

    def _signal_group(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signum)

    def stop(self, timeout: float = 20.0) -> None:
        """Warm shutdown: the worker finishes what it is doing."""
        if self.process is None:
            return
        self._signal_group(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self.process = None

    def kill(self) -> None:
        """SIGKILL the worker and every pool process at once: a crash, mid-whatever."""
        if self.process is None:
            return
        self._signal_group(signal.SIGKILL)
        self.process.wait()
        self.process = None
