"""A bounded queue of readings that hands them to the scorer in batches."""

from __future__ import annotations

import threading
from collections import deque

Reading = tuple[float, dict[str, float | None]]


class ReadingQueue:
    """Producers block when ``capacity`` readings are waiting, so nothing is dropped on overload."""

    def __init__(self, capacity: int) -> None:
        self._items: deque[Reading] = deque()
        self._capacity = capacity
        self._cond = threading.Condition()
        self._closed = False

    def put(self, readings: list[Reading]) -> None:
        with self._cond:
            while len(self._items) >= self._capacity and not self._closed:
                self._cond.wait()
            self._items.extend(readings)
            self._cond.notify_all()

    def get(self, max_items: int, timeout: float) -> list[Reading]:
        """Up to ``max_items`` readings; empty after ``timeout`` seconds with nothing queued."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            n = min(max_items, len(self._items))
            out = [self._items.popleft() for _ in range(n)]
            if out:
                self._cond.notify_all()
            return out

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)
