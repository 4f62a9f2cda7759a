"""A private, throw-away PostgreSQL cluster: its own data directory, port and `postgres` child process.

`postgres` runs in the foreground as our child (not daemonized by `pg_ctl start`), so it dies with its
parent and `stop()`/`kill()` are plain signals (SIGINT is a fast shutdown). As root, initdb and postgres
run as the `postgres` user."""

import atexit
import functools
import glob
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psycopg

from src.devserver.redis_server import die_with_parent, free_port, kill_group, stop_or_kill


def postgres_bin_dir() -> Path:
    """The newest /usr/lib/postgresql/*/bin, else the directory of `postgres` on PATH."""
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
    on_path = shutil.which("postgres")
    if not versions and not on_path:
        raise RuntimeError("no PostgreSQL server binaries in /usr/lib/postgresql/*/bin or on PATH")
    return Path(versions[-1]) if versions else Path(str(on_path)).parent


class PrivatePostgres:
    """`PrivatePostgres(workdir).start()`, then `.url`; `restart()`, `stop()` and `kill()` keep the data
    and the port, so a restarted cluster is the same database to its clients. The caller owns workdir."""

    def __init__(self, workdir: str, port: int | None = None) -> None:
        self.workdir = Path(workdir).resolve()
        self.data = self.workdir / "pgdata"
        self.log = self.workdir / "postgres.log"
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._as = {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}
        atexit.register(self.stop)  # a caller that forgets stop() still leaves nothing running

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/herald"

    def _run(self, command: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as log:
            return subprocess.Popen(
                [str(postgres_bin_dir() / command[0]), *command[1:]], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, **self._as, **kwargs,  # type: ignore[arg-type]
            )  # fmt: skip

    def _initdb(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        if self._as:  # the postgres user must own the data and reach it: let it traverse the parents
            shutil.chown(self.data, "postgres", "postgres")
            for parent in self.data.parents:
                if not parent.stat().st_mode & 0o001:
                    parent.chmod(parent.stat().st_mode | 0o001)
        initdb = ["initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"]
        if self._run([*initdb, "--locale=C"]).wait() != 0:
            raise RuntimeError(f"initdb failed; see {self.log}")

    def start(self, timeout: float = 30.0) -> "PrivatePostgres":
        if not (self.data / "PG_VERSION").exists():
            self._initdb()
        settings = {"listen_addresses": "127.0.0.1", "port": self.port, "unix_socket_directories": self.data,
                    "fsync": "off", "max_connections": 200}  # fmt: skip
        self.process = self._run(
            ["postgres", "-D", str(self.data), *(f"--{key}={value}" for key, value in settings.items())],
            start_new_session=True,  # a Ctrl-C meant for the parent is not a shutdown request
            preexec_fn=functools.partial(die_with_parent, signal.SIGINT),
        )
        admin = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(admin, autocommit=True, connect_timeout=2) as conn:
                    if not conn.execute("SELECT 1 FROM pg_database WHERE datname = 'herald'").fetchone():
                        conn.execute("CREATE DATABASE herald")
                return self
            except psycopg.OperationalError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"postgres did not start; see {self.log}") from None
                time.sleep(0.1)

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT): open transactions are rolled back, clients disconnected."""
        stop_or_kill(self.process, signal.SIGINT, timeout)
        self.process = None

    def restart(self, mode: str = "fast") -> "PrivatePostgres":
        """`pg_ctl restart -m fast`, done as our own child: stop, start, return once it answers again."""
        assert mode == "fast", "only the fast mode is supported"
        self.stop()
        return self.start()

    def kill(self) -> None:
        """SIGKILL the postmaster and its backends at once: a crash (the next start recovers)."""
        kill_group(self.process)
        self.process = None

    def __enter__(self) -> "PrivatePostgres":
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
