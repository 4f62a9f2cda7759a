"""`make run` end to end: the runner on a fresh database with no Redis reachable, as a newcomer has it."""

import email
import email.policy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from src.devserver.redis_server import free_port, redis_answers
from tests.conftest import RUN_DIR


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def children_of(pid: int) -> dict[int, str]:
    """Direct children of a process, with their command lines (Linux /proc)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                found[int(stat.parent.name)] = cmdline
        except (OSError, IndexError, ValueError):
            continue  # the process ended while we looked
    return found


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.fixture
def runner():
    run_dir = RUN_DIR / "make-run"
    unreachable_redis = f"redis://127.0.0.1:{free_port()}/0"
    ours = ("SMTP_", "EMAIL_BACKEND", "PORT", "SINK_PORT", "PUBLIC_BASE_URL")
    env = {key: value for key, value in os.environ.items() if not key.startswith(ours)}
    env.update(DATABASE_URL=f"sqlite:///{run_dir / 'herald.db'}", REDIS_URL=unreachable_redis)
    api_port, sink_port = free_port(), free_port()
    output = RUN_DIR / "make-run.log"
    with output.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "src.devserver.run", "--port", str(api_port), "--sink-port",
             str(sink_port), "--run-dir", str(run_dir)],
            cwd=Path(__file__).resolve().parents[1], env=env, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=_ignore_sigint,  # as a script's background job starts it: Ctrl-C must still stop it
        )  # fmt: skip
    try:
        wait_for(lambda: b"Herald is running" in output.read_bytes(), 60, "the runner to start")
        api = httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=10)
        wait_for(lambda: _answers(api), 30, "the API")
        yield process, api, sink_port, run_dir / "mail", output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _answers(api: httpx.Client) -> bool:
    try:
        return api.get("/healthz").status_code == 200
    except httpx.HTTPError:
        return False


def test_make_run_serves_the_demo_delivers_mail_and_survives_a_worker_crash(runner):
    """On ports moved away from the defaults: the banner and the links in the mail follow them."""
    process, api, sink_port, maildir, output = runner
    log = output.read_text()
    assert "No Redis answered" in log and "alice@demo.herald.dev / herald-demo" in log
    moved = f"http://localhost:{api.base_url.port}"
    assert f"API          {moved}  (docs: {moved}/docs," in log
    assert f"SMTP sink on 127.0.0.1:{sink_port}, each message an .eml file in {maildir}/" in log
    assert f"email links  {moved}  (PUBLIC_BASE_URL)" in log
    private_redis = log.split("started a private one at ")[1].split()[0]

    def login(email: str) -> dict[str, str]:
        reply = api.post("/api/auth/login", json={"email": email, "password": "herald-demo"})
        assert reply.status_code == 200, reply.text
        return {"Authorization": f"Bearer {reply.json()['access_token']}"}

    bob = login("bob@demo.herald.dev")
    [org] = api.get("/api/orgs", headers=bob).json()
    board = api.get(f"/api/orgs/{org['id']}/tasks", headers=bob).json()["items"]
    assert {t["status"] for t in board} == {"todo", "in_progress", "in_review", "done", "cancelled"}
    [task] = [t for t in board if t["title"].startswith("Try Herald")]

    wait_for(lambda: list(maildir.glob("*.eml")), 15, "the email inviting Bob in the sink")

    def move_and_wait_for_mail(status: str) -> None:
        before = len(list(maildir.glob("*.eml")))
        reply = api.patch(f"/api/tasks/{task['id']}", json={"status": status}, headers=bob)
        assert reply.status_code == 200, reply.text
        wait_for(lambda: len(list(maildir.glob("*.eml"))) > before, 15, f"the {status} email in the sink")
        newest = max(maildir.glob("*.eml"), key=lambda path: path.name).read_bytes()
        mail = email.message_from_bytes(newest, policy=email.policy.default)
        assert mail["To"].addresses[0].addr_spec == "alice@demo.herald.dev" and status in mail["Subject"]
        assert f"{moved}/tasks/{task['id']}" in mail.get_body(("plain",)).get_content()

    move_and_wait_for_mail("in_progress")

    [worker] = [pid for pid, cmd in children_of(process.pid).items() if "celery" in cmd and " worker" in cmd]
    os.killpg(worker, signal.SIGKILL)
    wait_for(lambda: "worker exited with code -9; restarting it" in output.read_text(), 10, "a restart")
    move_and_wait_for_mail("in_review")

    process.send_signal(signal.SIGINT)  # Ctrl-C; SIGTERM takes the same way out
    assert process.wait(timeout=20) == 0
    assert not children_of(process.pid)
    assert not redis_answers(private_redis)
