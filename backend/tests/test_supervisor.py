"""deploy/supervisor/herald.conf under a real supervisord: it starts the API, worker, beat and Flower,
and restarts a killed worker, which then delivers what was queued while it was down, once."""

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from src.db import SessionLocal
from src.devserver.redis_server import die_with_parent, free_port
from src.emails.models import EmailQueue, EmailStatus
from src.emails.service import EmailService
from tests.conftest import IN_CI, RUN_DIR
from tests.test_emails import wait_until

BACKEND = Path(__file__).resolve().parents[1]
CONF = BACKEND.parent / "deploy" / "supervisor" / "herald.conf"
PROGRAMS = ("herald-api", "herald-worker", "herald-beat", "herald-flower")


def supervisor_binaries() -> tuple[str, str]:
    bin_dir = Path(sys.executable).parent
    found = [shutil.which(name, path=f"{bin_dir}{os.pathsep}{os.environ['PATH']}") for name in
             ("supervisord", "supervisorctl")]  # fmt: skip
    if not all(found):
        if IN_CI:
            pytest.fail("CI=true and no supervisord (pip install supervisor)")
        pytest.skip("no supervisord (pip install supervisor)")
    return found[0], found[1]  # type: ignore[return-value]


class Supervisor:
    """supervisord in the foreground on a private socket, running deploy/supervisor/herald.conf with
    this checkout for /opt/herald/backend, the test's user and ports, and its logs in RUN_DIR (where a
    failing test's report finds them)."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.supervisord, self.supervisorctl = supervisor_binaries()
        self.workdir = workdir
        self.api_port = free_port()
        self.log = RUN_DIR / "supervisord.log"
        programs = (
            CONF.read_text()
            .replace("/opt/herald/backend", str(BACKEND))
            .replace("/var/log/herald/", f"{RUN_DIR}/supervisor-")
            .replace("--port 8000", f"--port {self.api_port}")
            .replace("user=herald\n", "")  # the test runs everything as itself
        )
        (workdir / "herald.conf").write_text(programs)
        self.main_conf = workdir / "supervisord.conf"
        self.main_conf.write_text(
            f"[unix_http_server]\nfile={workdir}/supervisor.sock\n\n"
            f"[supervisord]\nlogfile={self.log}\npidfile={workdir}/supervisord.pid\n"
            f"childlogdir={workdir}\n\n"
            "[rpcinterface:supervisor]\n"
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n"
            f"[supervisorctl]\nserverurl=unix://{workdir}/supervisor.sock\n\n"
            f"[include]\nfiles={workdir}/herald.conf\n"
        )
        self.env = {**os.environ, **env}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> "Supervisor":
        with (self.workdir / "supervisord.out").open("ab") as out:
            self.process = subprocess.Popen(
                [self.supervisord, "--nodaemon", "-c", str(self.main_conf)], env=self.env, stdout=out,
                stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
            )  # fmt: skip
        return self

    def ctl(self, *args: str) -> str:
        result = subprocess.run(
            [self.supervisorctl, "-c", str(self.main_conf), *args], capture_output=True, text=True, timeout=60
        )
        return result.stdout

    def states(self) -> dict[str, tuple[str, int]]:
        """{program: (state, pid)} from `supervisorctl status`."""
        states = {}
        for line in self.ctl("status").splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].startswith("herald:"):
                pid = int(parts[3].rstrip(",")) if parts[1] == "RUNNING" else 0
                states[parts[0].removeprefix("herald:")] = (parts[1], pid)
        return states

    def all_running(self) -> bool:
        states = self.states()
        return all(states.get(name, ("",))[0] == "RUNNING" for name in PROGRAMS)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # supervisord stops each program its own way
            try:
                self.process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def answers(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.status
    except OSError:
        return 0


def delivered(sink, message_id: str) -> int:
    return Counter(m.message["Message-ID"] for m in sink.messages)[message_id]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # production's database
def test_supervisor_runs_herald_and_restarts_a_killed_worker_which_delivers_once(
    db, database_url, sink, tmp_path
):
    workdir = Path(tmp_path)
    flower_port = free_port()
    env = {
        "DATABASE_URL": database_url,
        # A Redis database of their own: the suite's shared worker (database 0) takes nothing of theirs.
        "REDIS_URL": os.environ["REDIS_URL"].rsplit("/", 1)[0] + "/1",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(sink.port),
        "SMTP_USE_TLS": "false",
        "EMAIL_QUEUE_INTERVAL": "1",
        "EMAIL_LEASE_SECONDS": "3",
        "CELERY_CONCURRENCY": "2",
        "FLOWER_PORT": str(flower_port),
    }
    supervisor = Supervisor(workdir, env).start()
    try:
        wait_until(
            supervisor.all_running, timeout=60, interval=0.5, message=f"all running: {supervisor.states()}"
        )
        api = f"http://127.0.0.1:{supervisor.api_port}"
        wait_until(lambda: answers(f"{api}/healthz") == 200, timeout=30, message="the API through supervisor")
        wait_until(lambda: answers(f"http://127.0.0.1:{flower_port}/healthcheck") == 200, message="Flower")

        _state, worker_pid = supervisor.states()["herald-worker"]
        os.killpg(worker_pid, signal.SIGKILL)  # the worker and its pool at once, as the OOM killer would
        with SessionLocal() as session:  # queued while it is down; beat's next run asks a worker for it
            email = EmailService.queue_email(
                session, to_email="ops@example.com", subject="While down", body_text="b", wake_worker=False
            )
            session.commit()
            message_id = email.message_id

        wait_until(
            lambda: supervisor.states()["herald-worker"][1] not in (0, worker_pid),
            timeout=30,
            message="supervisor restarting the worker",
        )
        wait_until(
            lambda: delivered(sink, message_id), timeout=60, message="the email sent by the new worker"
        )
        time.sleep(2.5)  # several more beat runs: none sends it again
        assert delivered(sink, message_id) == 1
        with SessionLocal() as session:
            row = session.scalars(select(EmailQueue).where(EmailQueue.message_id == message_id)).one()
            assert row.status == EmailStatus.sent and row.attempts == 1
        assert "exited: herald-worker (terminated by SIGKILL" in supervisor.log.read_text()
    finally:
        supervisor.stop()
    log = supervisor.log.read_text()
    for name in PROGRAMS:  # each stopped by its stopsignal, none killed after stopwaitsecs
        assert f"stopped: {name} (" in log, log[-2000:]
    assert "killing" not in log.lower(), log[-2000:]
