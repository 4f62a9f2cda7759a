"""`make run`: everything Herald needs, in the foreground, on the embedded defaults.

Migrates, seeds the demo, then runs the API on :8000, a Celery worker and beat, and a local SMTP sink
on :1025 (mail lands in backend/.run/mail/), each line of output prefixed by its process. Uses the Redis
at REDIS_URL when one answers, otherwise starts a private one. Ctrl-C stops everything it started.
"""

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
from src.devserver.redis_server import PrivateRedis, die_with_parent, redis_answers
from src.devserver.seed import seed_demo

RUN_DIR = BACKEND_DIR / ".run"
SINK_PORT = 1025
API_PORT = int(os.environ.get("PORT", "8000"))
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


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupt)
    RUN_DIR.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    private_redis = None
    if not settings.redis_sentinel_master and not redis_answers(settings.redis_url):
        private_redis = PrivateRedis(workdir=str(RUN_DIR)).start()
        env["REDIS_URL"] = private_redis.url
        print(f"No Redis answered at {settings.redis_url}; started a private one at {private_redis.url}")
    if not settings.smtp_host:
        env.update(
            SMTP_HOST="127.0.0.1", SMTP_PORT=str(SINK_PORT), SMTP_USE_TLS="false", SMTP_USE_SSL="false"
        )

    alembic_config = Config(str(BACKEND_DIR / "alembic.ini"))
    command.upgrade(alembic_config, "head")
    with SessionLocal() as session:
        logins = seed_demo(session)

    python = sys.executable
    celery = [python, "-m", "celery", "-A", "src.celery_app"]
    processes = [
        _start(
            "smtp",
            [
                python,
                "-m",
                "src.devserver.smtp_sink",
                "--port",
                str(SINK_PORT),
                "--maildir",
                str(RUN_DIR / "mail"),
            ],
            env,
        ),
        _start("api", [python, "-m", "uvicorn", "src.main:app", "--port", str(API_PORT)], env),
        _start("worker", [*celery, "worker", "--loglevel=info", "--concurrency=2"], env),
        _start(
            "beat",
            [*celery, "beat", "--loglevel=info", "--schedule", str(RUN_DIR / "celerybeat-schedule")],
            env,
        ),
    ]
    print(
        f"\nHerald is running: API http://localhost:{API_PORT}/docs"
        f" | mail sink :{SINK_PORT} -> {Path(RUN_DIR / 'mail').relative_to(BACKEND_DIR.parent)}/\n"
        "Demo logins (POST /api/auth/login):\n"
        + "".join(f"  {email} / {password}\n" for email, password in logins)
        + "Ctrl-C stops everything.\n",
        flush=True,
    )
    try:
        while all(process.poll() is None for process in processes):
            time.sleep(0.5)
        print("A process exited; stopping the others.")
    except KeyboardInterrupt:
        print("\nStopping...")
    finally:
        _stop(processes)
        if private_redis:
            private_redis.stop()


if __name__ == "__main__":
    main()
