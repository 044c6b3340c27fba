"""The queue between the MQTT thread and the writer, and how the writer cuts it into batches."""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass
from typing import Any

from shared.protocol import Channel


@dataclass(frozen=True)
class Inbound:
    """One validated message waiting to be stored; ``mid``/``epoch`` let the writer PUBACK it afterwards."""

    channel: Channel
    device: str
    message: Any
    received_at: float
    mid: int
    epoch: int


class Batcher:
    """Cuts the inbound queue into batches: up to ``max_items`` messages, closed ``wait_s`` after the
    first one or as soon as nothing new arrived for ``idle_s``.

    Under load a batch fills from what queued up during the previous commit, so throughput grows with
    load; when traffic is sparse a message waits at most ``idle_s`` before it is written.
    """

    _STOP = object()

    def __init__(self, max_items: int, wait_s: float, idle_s: float, maxsize: int) -> None:
        self.max_items = max_items
        self.wait_s = wait_s
        self.idle_s = idle_s
        self._queue: queue.Queue[Any] = queue.Queue(maxsize)
        self._stopping = False

    def put(self, item: Inbound) -> None:
        """Blocks when the queue is full: the broker keeps what the hub cannot take yet."""
        self._queue.put(item)

    def stop(self) -> None:
        """The writer returns the messages queued so far, then ``None``."""
        self._queue.put(self._STOP)

    def empty(self) -> bool:
        return self._queue.empty()

    def __len__(self) -> int:
        return self._queue.qsize()

    def next(self) -> list[Inbound] | None:
        """The next batch (blocks until there is one); ``None`` once stopped and drained."""
        if self._stopping:
            return None
        first = self._queue.get()
        if first is self._STOP:
            return None
        batch: list[Inbound] = [first]
        deadline = time.monotonic() + self.wait_s
        while len(batch) < self.max_items:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.idle_s <= 0:
                    break
                try:
                    item = self._queue.get(timeout=min(self.idle_s, remaining))
                except queue.Empty:
                    break
            if item is self._STOP:
                self._stopping = True
                break
            batch.append(item)
        return batch
