"""`make run`: everything Herald needs, in the foreground, on the embedded defaults.

Migrates, seeds the demo, then runs the API on :8000 (PORT), a Celery worker and beat, and a local SMTP
sink on :1025 (SINK_PORT; mail lands in backend/.run/mail/), each line of output prefixed by its
process. Uses the Redis at REDIS_URL when one answers, otherwise starts a private one. A process that
exits is restarted, as systemd would; Ctrl-C (or SIGTERM) stops everything it started.
"""

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from alembic import command
from alembic.config import Config

from src.config import BACKEND_DIR, settings
from src.db import SessionLocal
from src.devserver.processes import UVICORN_LIMITS, UVICORN_PROXY
from src.devserver.redis_server import PrivateRedis, die_with_parent, redis_answers
from src.devserver.seed import seed_demo

CRASH_LOOP_SECONDS = 10
COLORS = {"api": 32, "worker": 34, "beat": 35, "smtp": 33, "redis": 31}


def _pump(name: str, process: subprocess.Popen[str]) -> None:
    assert process.stdout is not None
    prefix = f"\033[{COLORS.get(name, 37)}m{name:>6} |\033[0m "
    for line in process.stdout:
        sys.stdout.write(prefix + line)
        sys.stdout.flush()


def _start(name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        argv,
        cwd=BACKEND_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    threading.Thread(target=_pump, args=(name, process), daemon=True).start()
    return process


class Child:
    """One supervised process, restarted when it exits, as systemd does in production (a Celery
    worker can exit on its own when Redis goes away). Two quick exits in a row are a crash loop."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.name, self.argv, self.env = name, argv, env
        self.process = _start(name, argv, env)
        self.started = time.monotonic()
        self.quick_exits = 0

    def restart_if_exited(self) -> None:
        code = self.process.poll()
        if code is None:
            return
        quick = time.monotonic() - self.started < CRASH_LOOP_SECONDS
        self.quick_exits = self.quick_exits + 1 if quick else 0
        if self.quick_exits > 1:
            raise SystemExit(f"{self.name} keeps exiting (code {code}); stopping everything.")
        print(f"{self.name} exited with code {code}; restarting it.", flush=True)
        self.process = _start(self.name, self.argv, self.env)
        self.started = time.monotonic()


def _stop(processes: list[subprocess.Popen[str]]) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run Herald locally: API, worker, beat, SMTP sink.")
    parser.add_argument("--port", type=int, default=settings.port, help="API port (PORT)")
    parser.add_argument(
        "--sink-port", type=int, default=settings.sink_port, help="SMTP sink port (SINK_PORT)"
    )
    parser.add_argument("--run-dir", type=Path, default=BACKEND_DIR / ".run", help="logs, mail, state")
    return parser.parse_args()


def main() -> None:
    """Ctrl-C (SIGINT, which the terminal also sends `make`) or SIGTERM, at any moment, stops what was
    started and exits 0: a failing exit would have `make run` report an error for a normal stop."""
    args = _arguments()
    # SIGINT too: a process started from a script's background job inherits it ignored, and would
    # then go on running through Ctrl-C (it did under a test run started that way).
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    settings.port = args.port  # the links in the mail seeded here, and in the children's (PORT below)
    children: dict[str, Child] = {}
    with contextlib.ExitStack() as last_stops:
        try:
            _start_everything(args, children, last_stops)
            while True:
                time.sleep(0.5)
                for child in children.values():
                    child.restart_if_exited()
        except KeyboardInterrupt:
            print("\nStopping...", flush=True)
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the stop short
                signal.signal(signum, signal.SIG_IGN)
            _stop([child.process for child in children.values()])
    print("Stopped.", flush=True)


def _start_everything(
    args: argparse.Namespace, children: dict[str, Child], last_stops: contextlib.ExitStack
) -> None:
    """Migrate, seed, start the processes into `children` (each as it starts, so an interrupt stops
    those already running; a private Redis goes on `last_stops`) and print where everything is."""
    args.run_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", PORT=str(args.port))
    if not settings.redis_sentinel_master and not redis_answers(settings.redis_url):
        private_redis = PrivateRedis(workdir=str(args.run_dir)).start()
        last_stops.callback(private_redis.stop)
        env["REDIS_URL"] = private_redis.url
        print(f"No Redis answered at {settings.redis_url}; started a private one at {private_redis.url}")
    maildir = args.run_dir / "mail"
    if settings.smtp_host:
        mail = f"SMTP {settings.smtp_host}:{settings.smtp_port} (SMTP_HOST set: the sink is unused)"
    else:
        env.update(
            SMTP_HOST="127.0.0.1", SMTP_PORT=str(args.sink_port), SMTP_USE_TLS="false", SMTP_USE_SSL="false"
        )
        mail = f"SMTP sink on 127.0.0.1:{args.sink_port}, each message an .eml file in {maildir}/"

    alembic_config = Config(str(BACKEND_DIR / "alembic.ini"))
    command.upgrade(alembic_config, "head")
    with SessionLocal() as session:
        logins = seed_demo(session)

    python = sys.executable
    celery = [python, "-m", "celery", "-A", "src.celery_app"]
    commands = {
        "smtp": [
            python,
            "-m",
            "src.devserver.smtp_sink",
            "--port",
            str(args.sink_port),
            "--maildir",
            str(maildir),
        ],
        "api": [
            python,
            "-m",
            "uvicorn",
            "src.main:app",
            "--port",
            str(args.port),
            *UVICORN_LIMITS,
            *UVICORN_PROXY,
        ],
        "worker": [*celery, "worker", "--loglevel=info", "--concurrency=2"],
        "beat": [*celery, "beat", "--loglevel=info", "--schedule", str(args.run_dir / "celerybeat-schedule")],
    }
    for name, argv in commands.items():
        children[name] = Child(name, argv, env)
    api = f"http://localhost:{args.port}"
    print(
        "\nHerald is running:\n"
        f"  API          {api}  (docs: {api}/docs, live notifications: {api}/api/notifications/stream)\n"
        f"  mail         {mail}\n"
        f"  email links  {settings.public_url}  (PUBLIC_BASE_URL)\n"
        "Demo logins (POST /api/auth/login):\n"
        + "".join(f"  {email} / {password}\n" for email, password in logins)
        + "Ctrl-C stops everything.\n",
        flush=True,
    )


if __name__ == "__main__":
    main()
