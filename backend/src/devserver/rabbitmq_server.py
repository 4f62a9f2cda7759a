"""A private, throw-away RabbitMQ: Debian's `rabbitmq-server` in the foreground as our child, on free ports.

Everything it writes (its node database, logs, Erlang cookie) lives in `workdir`, and none of the machine's
own settings (/etc/rabbitmq) apply: its own node name, AMQP and distribution ports, no plugins. Like
`PrivateRedis`, `stop()` then `start()` comes back on the same port with its durable queues and
persistent messages, which is what a broker restart is to Celery.
"""

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import amqp

from src.devserver.redis_server import die_with_parent, free_port, kill_group, stop_or_kill

# The Debian package's wrapper (/usr/sbin/rabbitmq-server) switches to the rabbitmq user and its
# /var/lib/rabbitmq; the script it calls runs the broker as whoever starts it.
SERVER_SCRIPT = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")


def rabbitmq_server_script() -> str:
    if SERVER_SCRIPT.exists():
        return str(SERVER_SCRIPT)
    on_path = shutil.which("rabbitmq-server")
    if on_path:
        return on_path
    raise RuntimeError("no rabbitmq-server installed (Debian: apt-get install rabbitmq-server)")


def amqp_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """True once the broker accepts a login, not merely a TCP connection (it listens before it boots)."""
    connection = amqp.Connection(f"{host}:{port}", userid="guest", password="guest", connect_timeout=timeout)
    try:
        connection.connect()
        return True
    except (OSError, amqp.exceptions.AMQPError):
        return False
    finally:
        with contextlib.suppress(Exception):
            connection.collect()


class PrivateRabbitMQ:
    """`PrivateRabbitMQ(workdir).start()`, then `.url`. The caller owns workdir."""

    def __init__(self, workdir: str, port: int | None = None, consumer_timeout_ms: int = 1_800_000) -> None:
        self.workdir = Path(workdir).resolve()
        self.port = port or free_port()
        self.dist_port = free_port()
        self.node = f"herald-{uuid.uuid4().hex[:8]}@localhost"
        self.consumer_timeout_ms = consumer_timeout_ms
        self.log = self.workdir / "rabbitmq.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def _environment(self) -> dict[str, str]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "rabbitmq.conf"
        config.write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            f"consumer_timeout = {self.consumer_timeout_ms}\n"
            "log.console = true\nlog.file = false\n"
        )
        plugins = self.workdir / "enabled_plugins"
        plugins.write_text("[].\n")  # no management plugin: it would want port 15672
        cookie = self.workdir / ".erlang.cookie"  # Erlang reads it from $HOME; it must be private
        if not cookie.exists():
            cookie.write_text(uuid.uuid4().hex)
            cookie.chmod(0o400)
        return {
            **os.environ,
            "HOME": str(self.workdir),
            "RABBITMQ_CONF_ENV_FILE": str(self.workdir / "rabbitmq-env.conf"),  # none: not /etc's
            "RABBITMQ_CONFIG_FILE": str(config),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.workdir / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.workdir / "log"),
            "RABBITMQ_PID_FILE": str(self.workdir / "rabbitmq.pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    def start(self, timeout: float = 60.0) -> "PrivateRabbitMQ":
        env = self._environment()
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [rabbitmq_server_script()], env=env, cwd=self.workdir, stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=die_with_parent,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not amqp_answers("127.0.0.1", self.port, timeout=0.5):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"rabbitmq-server did not start on port {self.port}; see {self.log}")
            time.sleep(0.2)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM: the start script stops the node cleanly (queues and messages are kept)."""
        stop_or_kill(self.process, signal.SIGTERM, timeout)
        self.kill()  # the Erlang VM and its helpers (erl_child_setup, inet_gethost), if any are left

    def kill(self) -> None:
        kill_group(self.process)
        self.process = None
