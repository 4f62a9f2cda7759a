"""What a transaction owes others once it commits, done by one background thread per process.

A request answers as soon as its transaction commits. Telling the broker and the live streams about
it (publishing wake-ups, numbering and publishing notifications) happens here, so a request never
holds its connection while taking a second one, never waits on the notification sequence's lock,
and never waits on Redis. The same callable submitted many times before the thread gets to it runs
once, after all of them: one `publish_pending` numbers and publishes the notifications of many
commits together, and one wake-up message announces their emails. A `Spaced` callback runs at most
once per interval: under a steady stream of commits its runs gather them instead of following each.

Everything handed over is a hint backed by the database: if the process dies first, the beat jobs
(queue processor, notification publisher) do it instead.
"""

import atexit
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

log = logging.getLogger("herald.relay")


@dataclass(eq=False)
class Spaced:
    """A callback the relay runs at most once per `seconds`. Asked again sooner, it runs once when the
    interval ends, for every request in between; asked after a quiet spell, it runs at once."""

    callback: Callable[[], object]
    seconds: float
    last_run: float = float("-inf")
    waiting_in: int = 0  # the pid of the process whose relay holds it, submitted and not yet run

    def __call__(self) -> object:
        # Cleared before the callback reads what it acts on: whoever asks after this line may go
        # unseen by this run, so asks again.
        self.waiting_in = 0
        self.last_run = time.monotonic()
        return self.callback()

    @property
    def due(self) -> float:
        return self.last_run + self.seconds


class _Flush:
    """In a batch, it has the relay run every deferred `Spaced` callback at once; run after them, it
    tells the waiting `flush()`."""

    def __init__(self) -> None:
        self.done = threading.Event()

    def __call__(self) -> None:
        self.done.set()


class Relay:
    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Callable[[], object]] = queue.SimpleQueue()
        self._deferred: dict[Spaced, None] = {}  # asked for, not yet due; the relay thread's own
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def submit(self, callbacks: Iterable[Callable[[], object]]) -> None:
        """Queue the callbacks; a `Spaced` one already waiting to run is not queued again, as its run
        is still to come: under a steady stream of commits the relay thread wakes once per
        interval, not once per commit (each wake cost a serial queueing caller ~17 % of its CPU)."""
        self._ensure_running()
        for callback in callbacks:
            if isinstance(callback, Spaced):
                if callback.waiting_in == self._pid:
                    continue
                callback.waiting_in = self._pid
            self._queue.put(callback)

    def flush(self, timeout: float) -> bool:
        """Wait until everything submitted so far has run (tests, and the exit of short-lived
        processes such as the repair CLI)."""
        if self._thread is None or self._pid != os.getpid():
            return True
        flush = _Flush()
        self._queue.put(flush)  # runs after everything queued before it, deferred callbacks too
        return flush.done.wait(timeout)

    def _ensure_running(self) -> None:
        if self._thread is not None and self._pid == os.getpid():
            return
        with self._lock:
            if self._thread is not None and self._pid == os.getpid():
                return
            # New, or inherited through fork (Celery's prefork pool): threads do not survive a fork.
            self._queue = queue.SimpleQueue()
            self._deferred = {}
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="herald-relay", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            flushing = any(isinstance(callback, _Flush) for callback in batch)
            if flushing:
                batch = [*self._deferred, *batch]
            # Each distinct callback once, at its last place: after every commit that asked for it.
            for callback in list(dict.fromkeys(reversed(batch)))[::-1]:
                if isinstance(callback, Spaced):
                    if not flushing and callback.due > time.monotonic():
                        self._deferred[callback] = None
                        continue
                    self._deferred.pop(callback, None)
                try:
                    callback()
                except Exception:  # the data is committed; a hint that fails is only logged
                    log.exception("after-commit callback %r failed", callback)

    def _next_batch(self) -> list[Callable[[], object]]:
        """What was submitted, waiting no longer than the first deferred callback is due; with those
        that are due now at the end."""
        first_due = min((spaced.due for spaced in self._deferred), default=None)
        try:
            timeout = None if first_due is None else max(0.0, first_due - time.monotonic())
            batch = [self._queue.get(timeout=timeout)]
        except queue.Empty:
            batch = []
        while not self._queue.empty():
            batch.append(self._queue.get_nowait())
        now = time.monotonic()
        return batch + [spaced for spaced in self._deferred if spaced.due <= now]


relay = Relay()
atexit.register(relay.flush, 5.0)
