import asyncio
import gc
import subprocess
import sys
from pathlib import Path

from src import gc_pacing


def test_what_a_burst_left_young_is_collected_once_the_process_is_quiet():
    """Objects that survive a burst end up in the oldest generation without any allocation after the
    burst (which would otherwise trigger their collection: a broadcast's, in an API process)."""

    async def scenario() -> bool:
        collector = asyncio.create_task(gc_pacing.collect_when_quiet())
        await asyncio.sleep(0)
        survivors = [[n] for n in range(50_000)]  # lists: tracked by the collector
        await asyncio.sleep(4 * gc_pacing.QUIET_SECONDS)
        promoted = any(o is survivors[-1] for o in gc.get_objects(generation=2))
        collector.cancel()
        return promoted

    # No automatic collection: only `collect_when_quiet` can move the burst out of the youngest one.
    gc.disable()
    try:
        assert asyncio.run(scenario())
    finally:
        gc.enable()


_STARTUP = """
import gc, weakref
from src import gc_pacing

class Node:
    pass

for_good = [[n] for n in range(10_000)]  # made at startup, as an app's objects are
garbage = Node()
garbage.self = garbage  # a cycle nothing refers to once `garbage` is deleted
freed = weakref.ref(garbage)
del garbage
gc_pacing.configure()
tracked = {id(o) for o in gc.get_objects()}  # generations 0-2: what collections walk
assert gc.get_freeze_count() >= len(for_good), gc.get_freeze_count()
assert id(for_good[-1]) not in tracked, "startup objects still walked"
assert freed() is None, "startup garbage frozen for good"
later = [[n] for n in range(10)]  # made after startup, by requests (or a later test's app)
gc_pacing.configure()
assert any(o is later[-1] for o in gc.get_objects()), "frozen by a second start"
"""


def test_what_exists_at_startup_is_left_out_of_every_collection():
    """Modules, classes and routes live as long as the process: a full collection that walked them
    stopped every request in an API process for 80-130 ms. Garbage left by startup is freed first.
    In a fresh process: freezing is for good, and this one's state belongs to the other tests."""
    backend = Path(__file__).parents[1]
    run = subprocess.run(
        [sys.executable, "-c", _STARTUP], cwd=backend, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
