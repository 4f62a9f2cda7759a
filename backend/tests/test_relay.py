"""The relay's spaced callbacks: at once after a quiet spell, then at most once per interval."""

import os
import threading
import time

from src.relay import Relay, Spaced


def test_a_spaced_callback_runs_at_once_then_once_per_interval_for_all_asked_in_between():
    relay = Relay()
    runs: list[float] = []
    ran = threading.Event()

    def record() -> None:
        runs.append(time.monotonic())
        ran.set()

    spaced = Spaced(record, seconds=1.0)
    asked = time.monotonic()
    relay.submit([spaced])
    assert ran.wait(5) and runs[0] - asked < 0.5, "after a quiet spell it runs at once"
    for _ in range(20):  # a burst within the interval
        relay.submit([spaced])
    assert len(runs) == 1, "asked again within the interval, it waits for the interval's end"
    deadline = time.monotonic() + 5
    while len(runs) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)  # and no third run follows for the same burst
    assert len(runs) == 2 and runs[1] - runs[0] >= 1.0, "the whole burst got one run, once due"

    relay.submit([spaced])
    assert relay.flush(5) and len(runs) == 3, "flush() runs what is deferred without waiting"
    assert relay.flush(5) and len(runs) == 3, "nothing was owed, so nothing ran"


def test_a_spaced_callback_waiting_to_run_is_queued_once_however_often_it_is_asked():
    relay = Relay()
    held, busy, runs = threading.Event(), threading.Event(), []
    spaced = Spaced(lambda: runs.append(1), seconds=0.0)
    relay.submit([held.set, busy.wait])  # the relay thread is held up, so nothing given is taken yet
    assert held.wait(5)
    for _ in range(50):  # a burst of commits
        relay.submit([spaced])
    assert relay._queue.qsize() == 1, "one wake-up of the relay thread for the whole burst"
    busy.set()
    assert relay.flush(5) and runs == [1]
    relay.submit([spaced])  # asked after its run: it runs again
    assert relay.flush(5) and runs == [1, 1]


def test_a_forked_child_runs_a_spaced_callback_its_parent_was_holding():
    """Celery's prefork children inherit the parent's callbacks mid-wait; their own relay must not
    take them for already queued."""
    relay = Relay()
    runs = []
    spaced = Spaced(lambda: runs.append(os.getpid()), seconds=60)
    relay.submit([spaced])
    assert relay.flush(5) and len(runs) == 1
    relay.submit([spaced])  # deferred for a minute in the parent
    child = os.fork()
    if child == 0:
        relay.submit([spaced])
        os._exit(0 if relay.flush(5) and runs[-1] == os.getpid() else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
