"""A bounded queue of reading blocks that hands them to the scorer in batches."""

from __future__ import annotations

import threading
from collections import deque

from shared.readings import ReadingsBlock


class ReadingQueue:
    """Producers block when ``capacity`` readings are waiting, so nothing is dropped on overload.

    ``get`` merges consecutive blocks with the same features (many single readings become one block
    scored in one batch) and splits a block larger than ``max_items``.
    """

    def __init__(self, capacity: int) -> None:
        self._items: deque[ReadingsBlock] = deque()
        self._rows = 0
        self._capacity = capacity
        self._cond = threading.Condition()
        self._closed = False
        self.taken = 0  # readings handed to the consumer since creation
        self._put = 0

    def put(self, block: ReadingsBlock) -> int:
        """Queue ``block``; returns the readings put since creation, this block included (its position:
        it has been handed out once ``taken`` reaches that number)."""
        with self._cond:
            if not len(block):
                return self._put
            while self._rows >= self._capacity and not self._closed:
                self._cond.wait()
            self._items.append(block)
            self._rows += len(block)
            self._put += len(block)
            self._cond.notify_all()
            return self._put

    def get(self, max_items: int, timeout: float) -> list[ReadingsBlock]:
        """Blocks of up to ``max_items`` readings in all; empty after ``timeout`` s with nothing queued."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            out: list[list[ReadingsBlock]] = []
            room = max_items
            while self._items and room > 0:
                block = self._items[0]
                if len(block) > room:
                    self._items[0] = block.slice(room, len(block))
                    block = block.slice(0, room)
                else:
                    self._items.popleft()
                room -= len(block)
                if out and out[-1][0].features == block.features:
                    out[-1].append(block)
                else:
                    out.append([block])
            taken = max_items - room
            if taken:
                self._rows -= taken
                self.taken += taken
                self._cond.notify_all()
            return [ReadingsBlock.concat(group) for group in out]

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return self._rows
