import asyncio
import gc

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
