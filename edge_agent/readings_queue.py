"""A bounded queue of reading blocks that hands them to the scorer in batches, and the scoring turn."""

from __future__ import annotations

import threading
import time
from collections import deque

from shared.readings import ReadingsBlock


class ReadingQueue:
    """Producers block when ``capacity`` readings are waiting, so nothing is dropped on overload.

    ``get`` merges consecutive blocks with the same features (many single readings become one block
    scored in one batch) and splits a block larger than ``max_items``.

    The scoring turn: one thread at a time scores (and commits), in queue order.  ``get`` returns holding
    the turn (give it back with ``release``); ``put_or_claim`` lets a producer take the turn for a small
    block when nothing is queued and nobody is scoring, so it scores the block itself (why: a single
    reading handed to the scorer thread waits for that thread's wake-up and the GIL, up to ~2.7 ms at the
    p99 on an idle machine, docs/benchmarks.md).
    """

    def __init__(self, capacity: int) -> None:
        self._items: deque[ReadingsBlock] = deque()
        self._rows = 0
        self._capacity = capacity
        self._cond = threading.Condition()
        self._closed = False
        self._busy = False  # someone holds the scoring turn
        self.taken = 0  # readings handed to the consumer (or scored by a producer) since creation
        self._put = 0

    def put(self, block: ReadingsBlock) -> int:
        """Queue ``block``; returns the readings put since creation, this block included (its position:
        it has been handed out once ``taken`` reaches that number)."""
        return self.put_or_claim(block, 0)[0]

    def put_or_claim(self, block: ReadingsBlock, claim_max: int) -> tuple[int, bool]:
        """Like ``put``; but when ``block`` has at most ``claim_max`` readings, nothing is queued and nobody
        holds the scoring turn, the block is not queued: the caller gets the turn (True) and must score the
        block, then ``release``.  The block counts as put and taken at once."""
        with self._cond:
            if not len(block):
                return self._put, False
            if len(block) <= claim_max and not self._items and not self._busy and not self._closed:
                self._busy = True
                self._put += len(block)
                self.taken += len(block)
                return self._put, True
            while self._rows >= self._capacity and not self._closed:
                self._cond.wait()
            self._items.append(block)
            self._rows += len(block)
            self._put += len(block)
            self._cond.notify_all()
            return self._put, False

    def get(self, max_items: int, timeout: float) -> list[ReadingsBlock]:
        """Blocks of up to ``max_items`` readings in all; empty after ``timeout`` s with nothing queued.
        Returns holding the scoring turn (waiting for it beyond ``timeout`` if a producer holds it)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._busy or (not self._items and not self._closed):
                left = deadline - time.monotonic()
                if left <= 0 and not self._busy:
                    break
                self._cond.wait(left if left > 0 else None)
            self._busy = True
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

    def release(self) -> None:
        """Give back the scoring turn (taken by ``get`` or ``put_or_claim``)."""
        with self._cond:
            self._busy = False
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return self._rows
