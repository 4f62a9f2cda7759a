"""What a transaction owes others once it commits, done by one background thread per process.

A request answers as soon as its transaction commits. Telling the broker and the live streams about
it (publishing wake-ups, numbering and publishing notifications) happens here, so a request never
holds its connection while taking a second one, never waits on the notification sequence's lock,
and never waits on Redis. The same callable submitted many times before the thread gets to it runs
once, after all of them: one `publish_pending` numbers and publishes the notifications of many
commits together, and one wake-up message announces their emails.

Everything handed over is a hint backed by the database: if the process dies first, the beat jobs
(queue processor, notification publisher) do it instead.
"""

import atexit
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterable

log = logging.getLogger("herald.relay")


class Relay:
    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Callable[[], object]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def submit(self, callbacks: Iterable[Callable[[], object]]) -> None:
        self._ensure_running()
        for callback in callbacks:
            self._queue.put(callback)

    def flush(self, timeout: float) -> bool:
        """Wait until everything submitted so far has run (tests, and the exit of short-lived
        processes such as the repair CLI)."""
        if self._thread is None or self._pid != os.getpid():
            return True
        done = threading.Event()
        self._queue.put(done.set)  # runs after everything queued before it
        return done.wait(timeout)

    def _ensure_running(self) -> None:
        if self._thread is not None and self._pid == os.getpid():
            return
        with self._lock:
            if self._thread is not None and self._pid == os.getpid():
                return
            # New, or inherited through fork (Celery's prefork pool): threads do not survive a fork.
            self._queue = queue.SimpleQueue()
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="herald-relay", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            # Each distinct callback once, at its last place: after every commit that asked for it.
            for callback in list(dict.fromkeys(reversed(batch)))[::-1]:
                try:
                    callback()
                except Exception:  # the data is committed; a hint that fails is only logged
                    log.exception("after-commit callback %r failed", callback)


relay = Relay()
atexit.register(relay.flush, 5.0)
