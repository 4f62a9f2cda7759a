"""Stream clients for the tests: SSE over httpx and WebSocket over `websockets`, read in threads."""

import json
import queue
import threading
import time
from contextlib import ExitStack

import httpx
from websockets.sync.client import connect


class StreamClient:
    """Collects a stream's events; `next()` waits for the next one of a kind.

    A client is returned once its stream has sent its first event (the unread count): from then on
    the server has it subscribed, so whatever happens next reaches it.
    """

    def __init__(self) -> None:
        self.subscribed = threading.Event()
        self.events: queue.Queue[dict] = queue.Queue()
        self.status: int | None = None
        self.opened = threading.Event()
        self.ended = threading.Event()

    def _put(self, event: dict) -> None:
        self.events.put(event)
        self.subscribed.set()

    def next(self, event: str = "notification", timeout: float = 5.0) -> dict:
        deadline = time.monotonic() + timeout  # pings must not keep it waiting for ever
        while True:
            item = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            if item["event"] == event:
                return item

    def drain(self, wait: float = 0.3) -> list[dict]:
        """Everything that arrives within `wait` seconds."""
        items = []
        try:
            while True:
                items.append(self.events.get(timeout=wait))
        except queue.Empty:
            return items


class SseClient(StreamClient):
    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        super().__init__()
        self.body = b""
        self._client = httpx.Client(timeout=httpx.Timeout(5.0, read=30.0))
        threading.Thread(target=self._read, args=(url, headers or {}), daemon=True).start()
        assert self.opened.wait(10), "the stream did not answer"
        if self.status == 200:
            assert self.subscribed.wait(10), "the stream sent nothing"

    def _read(self, url: str, headers: dict[str, str]) -> None:
        try:
            with self._client.stream("GET", url, headers=headers) as response:
                self.status = response.status_code
                if response.status_code != 200:
                    self.body = response.read()
                    self.opened.set()
                    return
                self.opened.set()
                event: dict = {}
                for line in response.iter_lines():
                    if not line:
                        if event:
                            self._put(event)
                        event = {}
                    elif not line.startswith(":"):
                        field, _, value = line.partition(":")
                        value = value[1:] if value.startswith(" ") else value
                        if field == "data":
                            event["data"] = json.loads(value)
                        elif field in ("event", "id"):
                            event[field] = int(value) if field == "id" else value
        except (httpx.HTTPError, RuntimeError):
            pass
        finally:
            self.opened.set()
            self.ended.set()

    def close(self) -> None:
        self._client.close()
        self.ended.wait(5)


class WsClient(StreamClient):
    def __init__(self, url: str) -> None:
        super().__init__()
        self._stack = ExitStack()
        self.socket = self._stack.enter_context(connect(url, open_timeout=5))
        self.status = 101
        self.opened.set()
        threading.Thread(target=self._read, daemon=True).start()
        assert self.subscribed.wait(10), "the stream sent nothing"

    def _read(self) -> None:
        try:
            for message in self.socket:
                self._put(json.loads(message))
        except Exception as exc:  # closed
            print("ws reader ended:", repr(exc))
        finally:
            self.ended.set()

    def close(self) -> None:
        self._stack.close()
        self.ended.wait(5)
