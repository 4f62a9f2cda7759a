"""Mail connections kept open across deliveries in one worker process.

Opening an SMTP connection costs a TCP handshake, EHLO (with STARTTLS and login in production) and
QUIT: more round trips than the message itself. A wake-up delivers one email or a few, so a worker
process keeps the connections it finished with and hands them to its next deliveries. One that sat
unused for a while is checked (SMTP NOOP) before reuse, since the server may have dropped it; one
unused for SMTP_IDLE_SECONDS is closed.
"""

import atexit
import os
import threading
import time
from collections.abc import Hashable

from src.emails.backends import Connection, EmailBackend

CHECK_AFTER_SECONDS = 1.0  # idle longer than this: ask the server whether it is still there
REAP_EVERY_SECONDS = 0.5


class KeptConnections:
    def __init__(self) -> None:
        self._idle: list[tuple[Hashable, Connection, float]] = []  # (backend's key, connection, since)
        self._lock = threading.Lock()
        self._pid = 0
        self._idle_seconds = 0.0

    def take(self, backend: EmailBackend, idle_seconds: float) -> Connection:
        """A kept connection to the same server if one is alive, else a new one (which may raise
        `DeliveryError`)."""
        self._in_this_process(idle_seconds)
        key = backend.key()
        while (kept := self._pop(key, idle_seconds)) is not None:
            connection, since = kept
            if time.monotonic() - since < CHECK_AFTER_SECONDS or connection.alive():
                return connection
            connection.close()
        return backend.connect()

    def give_back(self, backend: EmailBackend, connection: Connection, idle_seconds: float) -> None:
        """Keep a connection that is in a clean state (between messages) for the next delivery."""
        if idle_seconds <= 0:
            connection.close()
            return
        self._in_this_process(idle_seconds)
        with self._lock:
            self._idle.append((backend.key(), connection, time.monotonic()))

    def close_all(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for _key, connection, _since in idle:
            connection.close()

    def _pop(self, key: Hashable, idle_seconds: float) -> tuple[Connection, float] | None:
        """The most recently used connection to `key`; connections to another server (settings
        changed) or idle too long are closed on the way."""
        stale: list[Connection] = []
        found = None
        with self._lock:
            now = time.monotonic()
            for entry in reversed(self._idle):
                entry_key, connection, since = entry
                if entry_key != key or now - since > idle_seconds:
                    stale.append(connection)
                elif found is None:
                    found = entry
            self._idle = [entry for entry in self._idle if entry is not found and entry[1] not in stale]
        for connection in stale:
            connection.close()
        return None if found is None else (found[1], found[2])

    def _in_this_process(self, idle_seconds: float) -> None:
        """Start, once per process (threads do not survive the prefork pool's fork), the thread that
        closes connections left unused, so an idle worker holds none open on the mail server."""
        self._idle_seconds = idle_seconds
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._idle = []  # inherited through fork: the parent's sockets are not ours to use
        threading.Thread(target=self._reap, name="herald-smtp-reaper", daemon=True).start()

    def _reap(self) -> None:
        while True:
            time.sleep(REAP_EVERY_SECONDS)
            now = time.monotonic()
            with self._lock:
                expired = [entry for entry in self._idle if now - entry[2] > self._idle_seconds]
                self._idle = [entry for entry in self._idle if entry not in expired]
            for _key, connection, _since in expired:
                connection.close()


kept_connections = KeptConnections()
atexit.register(kept_connections.close_all)
