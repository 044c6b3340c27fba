"""The queue between the MQTT thread and the writer, and how the writer cuts it into batches."""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from typing import Any, NamedTuple

from shared.protocol import Channel


class Inbound(NamedTuple):
    """One validated message waiting to be stored; ``mid``/``epoch`` let the writer PUBACK it afterwards.
    A named tuple: one is made per message on the MQTT thread (a frozen dataclass costs several times more)."""

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
    load; when traffic is sparse a message waits at most ``idle_s`` before it is written.  A deque under
    one lock, drained a batch at a time: ``queue.Queue``'s per-item locking was a tenth of ingest's CPU.
    One consumer (the writer).  ``put`` wakes it only when it has something to do — the first message of
    a batch, or a full batch — not once per message (each wake-up was a thread switch): while a batch
    gathers, ``put`` notes the time and the writer sleeps until ``idle_s`` after the latest message.
    """

    def __init__(self, max_items: int, wait_s: float, idle_s: float, maxsize: int) -> None:
        self.max_items = max_items
        self.wait_s = wait_s
        self.idle_s = idle_s
        self.maxsize = maxsize
        self._items: deque[Inbound] = deque()
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._stopped = False
        self._wake_at = _NEVER  # queue length at which put() wakes the writer (it is waiting for that)
        self._last_put = 0.0

    def put(self, item: Inbound) -> None:
        """Blocks when the queue is full: the broker keeps what the hub cannot take yet."""
        with self._lock:
            while len(self._items) >= self.maxsize and not self._stopped:
                self._not_full.wait()
            self._items.append(item)
            self._last_put = _now()
            if len(self._items) >= self._wake_at:
                self._wake_at = _NEVER
                self._not_empty.notify()

    def stop(self) -> None:
        """The writer returns the messages queued so far, then ``None``."""
        with self._lock:
            self._stopped = True
            self._not_empty.notify_all()
            self._not_full.notify_all()

    def empty(self) -> bool:
        return not self._items

    def __len__(self) -> int:
        return len(self._items)

    def _wait(self, wake_at: int, timeout: float | None = None) -> None:
        self._wake_at = wake_at
        self._not_empty.wait(timeout)
        self._wake_at = _NEVER

    def next(self) -> list[Inbound] | None:
        """The next batch (blocks until there is one); ``None`` once stopped and drained."""
        with self._lock:
            while not self._items:
                if self._stopped:
                    return None
                self._wait(1)
            deadline = _now() + self.wait_s
            while len(self._items) < self.max_items and not self._stopped and self.idle_s > 0:
                now = _now()
                quiet = now - self._last_put
                if now >= deadline or quiet >= self.idle_s:
                    break  # waited long enough, or nothing new for idle_s: write what we have
                self._wait(self.max_items, min(self.idle_s - quiet, deadline - now))
            n = min(self.max_items, len(self._items))
            if n == len(self._items):
                batch = list(self._items)
                self._items.clear()
            else:
                pop = self._items.popleft
                batch = [pop() for _ in range(n)]
            self._not_full.notify_all()
        return batch


_NEVER = sys.maxsize
_now = time.monotonic
