"""The README's commands work as printed, from a fresh copy of the repository.

Every command of every `bash` block is typed, in order, into a newcomer's terminal: one bash per block,
opened at the repository root, with no Herald setting in its environment and the virtualenv off its
PATH, so `cd`, variables, `source` and background jobs carry over as they do for a reader. A command
that serves until stopped (SERVERS) runs in a terminal of its own: started, awaited, stopped with
Ctrl-C. Every other command must finish within a minute with status 0 (or the documented failure),
else the test fails naming it: a command added to the README must work, or be listed here.

The copy gets this run's own Redis and ports (PORT, SINK_PORT, FLOWER_PORT, as the README says one can
move them; `localhost:8000` and `localhost:5555` in the commands follow), its own SQLite database (the
default, in the copy), and reuses the running virtualenv.
"""

import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from email import message_from_bytes, policy
from pathlib import Path
from typing import IO

import pytest

from src.config import Settings
from src.devserver.redis_server import PrivateRedis, die_with_parent, free_port
from tests.conftest import IN_CI, RUN_DIR

BACKEND = Path(__file__).resolve().parents[1]
REPOSITORY = BACKEND.parent
COMMAND_SECONDS = 60.0
READY_SECONDS = 90.0


@dataclass(frozen=True)
class Server:
    """README commands that serve until Ctrl-C, each in its own terminal."""

    kind: str  # starting one stops the running one of its kind (one port, one schedule file)
    command: str  # regular expression over the command without its comment
    ready: tuple[str, ...]  # what its output shows once it serves
    for_the_whole_readme: bool = False  # else it is stopped at the end of its block


SERVERS = (
    Server("herald", r"make run", ("Herald is running", "Application startup complete", " ready."), True),
    Server(
        "worker", r"make worker|\./start_celery_worker\.sh|celery -A src\.celery_app worker .*", (" ready.",)
    ),
    Server(
        "beat", r"make beat|\./start_celery_beat\.sh|celery -A src\.celery_app beat .*", ("beat: Starting",)
    ),
    Server(
        "flower",
        r"(FLOWER_UNAUTHENTICATED_API=true )?make flower|\./start_celery_flower\.sh",
        ("Visit me at",),
    ),
)
NOT_RUN = {"make test": "the suite this test is part of"}
# Commands whose documented answer is a failure: their exit status and what they say.
DOCUMENTED_FAILURES = {
    r"\.venv/bin/python -m src\.emails\.cli (retry \d+ \d+|cancel \d+)": (1, "no such email"),
    r"\.venv/bin/python -m src\.emails\.cli lift \S+": (1, "not suppressed"),
}
# What some commands must say, besides exiting 0: that they did their work, not just ran.
SAYS = {
    r"curl -s -X PATCH localhost:8000/api/tasks/1 .*": '"status":"in_progress"',
    r"ls backend/\.run/mail/": ".eml",
    r"\(cd backend && \.venv/bin/python -m src\.emails\.cli list\)": "alice@demo.herald.dev",
    r"curl -s localhost:5555/api/workers\?refresh=1": '"celery@',
    r"(make|celery -A src\.celery_app) inspect (active|ping)": "celery@",
    r"\.venv/bin/python -m src\.emails\.cli list --status failed": "no emails match",
    r"\.venv/bin/python -m src\.emails\.cli suppressions": "no address is suppressed",
}


def bash_blocks(markdown: str) -> list[list[str]]:
    """The commands of each ```bash block: continuation lines joined, blank and comment lines left out."""
    blocks = re.findall(r"(?ms)^```bash\n(.*?)^```", markdown)
    return [
        [line for line in block.replace("\\\n", "").splitlines() if line.strip() and not line.startswith("#")]
        for block in blocks
    ]


def without_comment(command: str) -> str:
    return " ".join(shlex.split(command, comments=True)) if "#" in command else command.strip()


def matching(patterns: dict[str, object] | tuple[Server, ...], command: str):
    if isinstance(patterns, dict):
        return next((value for key, value in patterns.items() if re.fullmatch(key, command)), None)
    return next((server for server in patterns if re.fullmatch(server.command, command)), None)


class Terminal:
    """One bash taking commands one at a time, each awaited."""

    def __init__(self, cwd: Path, env: dict[str, str], state_dir: Path) -> None:
        self.state_dir = state_dir
        self.process = subprocess.Popen(
            ["bash", "--noprofile", "--norc"], cwd=cwd, env=env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=die_with_parent,
        )  # fmt: skip
        self.lines: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True).start()

    def _read(self, stdout: IO[bytes]) -> None:
        for line in stdout:
            self.lines.put(line)

    def type(self, command: str, timeout: float = COMMAND_SECONDS) -> tuple[int | None, str]:
        """Run `command`; its exit status (None if still running after `timeout`) and its output."""
        assert self.process.stdin is not None
        done = f"done-{uuid.uuid4().hex}"
        self.process.stdin.write(f"{command}\nprintf '\\n{done} %s\\n' \"$?\"\n".encode())
        self.process.stdin.flush()
        output: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic())).decode(errors="replace")
            except queue.Empty:
                return None, "".join(output)
            if line.startswith(done):
                return int(line.split()[1]), "".join(output).rstrip("\n") + "\n"
            output.append(line)

    def state(self) -> tuple[Path, dict[str, str]]:
        """Where the terminal is and its environment: what a command typed there would run with."""
        status, output = self.type(f"pwd > {self.state_dir}/cwd && env -0 > {self.state_dir}/env")
        assert status == 0, output
        pairs = (
            item.split("=", 1) for item in (self.state_dir / "env").read_text().split("\0") if "=" in item
        )
        return Path((self.state_dir / "cwd").read_text().strip()), dict(pairs)

    def close(self) -> None:
        """Closing the terminal ends what it started in the background."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


class Serving:
    """A server command in a terminal of its own, in its own process group as a terminal's job is."""

    def __init__(self, server: Server, command: str, cwd: Path, env: dict[str, str], log: Path) -> None:
        self.server, self.command, self.log = server, command, log
        with log.open("wb") as output:
            self.process = subprocess.Popen(
                ["bash", "-c", command], cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=die_with_parent,
            )  # fmt: skip
        deadline = time.monotonic() + READY_SECONDS
        while not all(line in log.read_text(errors="replace") for line in server.ready):
            assert self.process.poll() is None, f"{command!r} exited:\n{log.read_text(errors='replace')}"
            assert time.monotonic() < deadline, f"{command!r} did not show {server.ready}; see {log}"
            time.sleep(0.2)

    def interrupt(self) -> str:
        """Ctrl-C: SIGINT to its process group. Its output, once it has stopped."""
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            pytest.fail(f"{self.command!r} did not stop on Ctrl-C within 30 s; see {self.log}")
        return self.log.read_text(errors="replace")


def fresh_copy(destination: Path) -> Path:
    """What a clone of this checkout holds, as its files are now (uncommitted edits too): the tracked
    files and the new ones git does not ignore, with their modes and times."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPOSITORY, capture_output=True, check=True,
    ).stdout  # fmt: skip
    for name in filter(None, listed.decode().split("\0")):
        source = REPOSITORY / name
        if source.is_file():  # not deleted since
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    (destination / "backend" / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    return destination


def newcomers_environment(redis_url: str, ports: dict[int, int]) -> dict[str, str]:
    """This environment without anything Herald, Flower, make or the virtualenv read; then this run's
    Redis and the moved ports."""
    ours = {name.upper() for name in Settings.model_fields} | {"VIRTUAL_ENV", "CELERY_CONCURRENCY"}
    env = {
        key: value
        for key, value in os.environ.items()
        if key.upper() not in ours and not key.startswith(("FLOWER_", "MAKE", "MFLAGS"))
    }
    venv_bins = {str(Path(sys.prefix, "bin")), str(BACKEND / ".venv" / "bin")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p not in venv_bins)
    env.update(REDIS_URL=redis_url, PORT=str(ports[8000]), SINK_PORT=str(ports[1025]))
    env.update(FLOWER_PORT=str(ports[5555]))
    return env


class Reader:
    """A newcomer following the README in the copy: a terminal per block, one per server, and a
    transcript of what the commands said."""

    def __init__(self, copy: Path, env: dict[str, str], ports: dict[int, int], transcript: IO[str]) -> None:
        self.copy, self.env, self.ports, self.transcript = copy, env, ports, transcript
        self.serving: dict[str, Serving] = {}

    def follow(self, number: int, block: list[str]) -> None:
        terminal = Terminal(self.copy, self.env, self.copy.parent)
        try:
            for command in block:
                self.transcript.write(f"$ {command}\n")
                self.type(terminal, command, f"readme-{number}")
        finally:
            terminal.close()
            for kind in [kind for kind, s in self.serving.items() if not s.server.for_the_whole_readme]:
                self.stop(kind)

    def type(self, terminal: Terminal, command: str, name: str) -> None:
        bare = without_comment(command)
        if bare in NOT_RUN:
            self.transcript.write(f"(not run: {NOT_RUN[bare]})\n")
            return
        typed = re.sub(r"\blocalhost:(8000|5555)\b", lambda m: f"localhost:{self.ports[int(m[1])]}", command)
        server = matching(SERVERS, bare)
        if server is not None:
            if server.kind in self.serving:
                self.stop(server.kind)
            cwd, env = terminal.state()
            log = RUN_DIR / f"{name}-{server.kind}.log"
            self.serving[server.kind] = Serving(server, typed, cwd, env, log)
            self.transcript.write(f"(serving; its output is in {log})\n")
            return
        status, output = terminal.type(typed)
        self.transcript.write(output)
        assert status is not None, (
            f"{command!r} still runs after {COMMAND_SECONDS:.0f} s: if it serves until stopped, add it "
            "to SERVERS with what it prints once ready"
        )
        expected_status, expected_text = matching(DOCUMENTED_FAILURES, bare) or (0, "")
        assert status == expected_status, f"{command!r} exited {status}:\n{output}"
        assert (matching(SAYS, bare) or expected_text) in output, f"{command!r} said:\n{output}"

    def stop(self, kind: str) -> None:
        output = self.serving.pop(kind).interrupt()
        if kind == "herald":  # make reports a recipe that failed, or died of the signal (`*** Interrupt`)
            assert "make: ***" not in output and output.rstrip().endswith("Stopped."), output[-2000:]


def test_every_command_the_readme_prints_works_as_printed(tmp_path: Path):
    if sys.prefix == sys.base_prefix:
        message = "the README's commands need backend/.venv: run the suite from a virtualenv (make test)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    copy = fresh_copy(tmp_path / "herald")
    redis = PrivateRedis(workdir=str(tmp_path)).start()
    ports = {8000: free_port(), 1025: free_port(), 5555: free_port()}
    transcript = RUN_DIR / "readme-terminal.log"
    with transcript.open("w", buffering=1) as said:
        reader = Reader(copy, newcomers_environment(redis.url, ports), ports, said)
        try:
            for number, block in enumerate(bash_blocks((copy / "README.md").read_text())):
                reader.follow(number, block)
            assert "event: notification" in transcript.read_text(), "Alice's stream showed no notification"
            reader.stop("herald")
        finally:
            for running in reader.serving.values():
                running.interrupt()
            redis.stop()

    # The email of the first five minutes: to Alice, about her task, linking to the port served.
    sink = copy / "backend" / ".run" / "mail"
    mails = [message_from_bytes(path.read_bytes(), policy=policy.default) for path in sink.glob("*.eml")]
    [status_mail] = [mail for mail in mails if "in_progress" in mail["Subject"]]
    assert status_mail["To"].addresses[0].addr_spec == "alice@demo.herald.dev"
    assert f"http://localhost:{ports[8000]}/tasks/1" in status_mail.get_body(("plain",)).get_content()
