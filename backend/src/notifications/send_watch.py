"""Cutting off live streams whose client stopped reading.

A send to such a client waits once its socket's buffers are full. Each stream notes when a send
starts and clears it when the send returns (almost always at once); one timer per process looks
every second and cancels the streams stuck in a send for longer than LIVE_SEND_TIMEOUT. A timeout
around every send cost each event a timer per stream: at 5,000 streams, about a sixth of a
broadcast's time.
"""

import asyncio
import weakref
from collections.abc import Awaitable
from typing import Any


class SendWatch:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.sending: dict[asyncio.Task[Any], float] = {}  # stream task -> loop time its send began
        self._cut_off: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="herald-live-send-watch")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def begin(self, task: asyncio.Task[Any]) -> None:
        """`task` starts a send to its client. A plain call, not a wrapping coroutine: SSE streams
        mark every event's write with this and `end`, on the hottest path a broadcast has."""
        self.sending[task] = asyncio.get_running_loop().time()

    def end(self, task: asyncio.Task[Any]) -> None:
        """`task`'s send returned (or failed, or its stream is over)."""
        self.sending.pop(task, None)

    async def send(self, sending: Awaitable[None]) -> None:
        """Await `sending` (a send to the stream's client) under the watch."""
        task = asyncio.current_task()
        assert task is not None
        self.begin(task)
        try:
            await sending
        finally:
            self.end(task)

    def cut_off(self, task: asyncio.Task[Any]) -> bool:
        """Whether the watch cancelled this stream task (its client stopped reading)."""
        return task in self._cut_off

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(1.0, self.timeout / 2))
            stuck_since = loop.time() - self.timeout
            for task, started in list(self.sending.items()):
                if started < stuck_since and task not in self._cut_off:
                    self._cut_off.add(task)
                    task.cancel()
