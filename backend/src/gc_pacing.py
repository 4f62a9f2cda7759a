"""When the cyclic garbage collector runs in an API process, so its pauses miss live broadcasts.

Each open stream keeps ~175 objects the collector tracks (its request's coroutines, closures, tasks),
and a full collection walks them all, stopping every stream: 0.37 s at 3,000 streams here. With
Python's default young threshold (700) one ran each time the heap grew by a quarter, so a broadcast
often waited for one (bench-live's p99); with these thresholds, at most once per 200,000 allocations.
A middle-generation collection walks what survived the young ones since the last: every
MIDDLE_THRESHOLD-th young collection, so a wave of new streams is walked in small steps (5-7 ms at
5,000 streams), not in one 80 ms pause every tenth.

What a wave leaves behind when it ends is still young, though, and the next allocations (a broadcast's)
would pay for walking and promoting it: a 20 ms young and a 170 ms middle collection in the first two
broadcasts after 5,000 streams opened. `collect_when_quiet` does that work as soon as the process goes
quiet instead, and the full collection too when one may be due, which would otherwise fall into the
next burst of work (950 ms at 5,000 streams).

A full collection also walks everything the process made while starting (modules, classes, routes,
~150,000 objects) though none of it ever becomes garbage: 80-130 ms in an API process, every request
in it waiting, once every 15-45 s under status changes (most of bench-api's p99 at 60/s). `configure`
freezes what exists at startup, so full collections leave it out.
"""

import asyncio
import gc
import time

YOUNG_THRESHOLD = 10_000  # allocations between young collections (Python's default: 700)
MIDDLE_THRESHOLD = 2  # young collections between middle-generation ones (Python's default: 10)
OLD_THRESHOLD = 10  # middle collections between full ones (Python's default)
QUIET_SECONDS = 0.25  # how often to look
QUIET_CPU = 0.1  # below this share of a core over QUIET_SECONDS, all threads together, the process is quiet
YOUNG_LEFT = YOUNG_THRESHOLD // 10  # fewer survivors than this in the young generation: nothing to do


def configure() -> None:
    """Call once the process has started (the app imported), before it serves. The freeze is done
    once per process: an app started again in it (each test's) must not freeze what came since."""
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_THRESHOLD)
    if not gc.get_freeze_count():
        gc.collect()  # what startup left as garbage is freed, not kept for good
        gc.freeze()


async def collect_when_quiet() -> None:
    """Collect what a burst of work left in the young generations once the process is quiet; runs
    until cancelled. Quiet is told by CPU time, not by allocation counts: those are net of what was
    freed, and barely move while a process opens streams at full speed."""
    cpu = time.process_time()
    while True:
        await asyncio.sleep(QUIET_SECONDS)
        now = time.process_time()
        used, cpu = now - cpu, now
        young, middle, old = gc.get_count()
        if used < QUIET_CPU * QUIET_SECONDS and (middle or young >= YOUNG_LEFT):
            # A middle collection counts towards the full one, explicit or not: once that many
            # happened, the next automatic one may be full. Better now than in a broadcast.
            gc.collect(2 if old >= OLD_THRESHOLD else 1)
