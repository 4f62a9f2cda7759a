"""The relay's spaced callbacks: at once after a quiet spell, then at most once per interval."""

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

    spaced = Spaced(record, seconds=0.3)
    asked = time.monotonic()
    relay.submit([spaced])
    assert ran.wait(5) and runs[0] - asked < 0.1, "after a quiet spell it runs at once"
    for _ in range(20):  # a burst within the interval
        relay.submit([spaced])
        time.sleep(0.005)
    time.sleep(0.1)
    assert len(runs) == 1, "asked again within the interval, it waits for the interval's end"
    time.sleep(0.4)
    assert len(runs) == 2 and runs[1] - runs[0] >= 0.3, "the whole burst got one run, once due"

    relay.submit([spaced])
    assert relay.flush(5) and len(runs) == 3, "flush() runs what is deferred without waiting"
    assert relay.flush(5) and len(runs) == 3, "nothing was owed, so nothing ran"
