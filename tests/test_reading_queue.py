"""The scoring turn: a producer scores a small block itself only when nobody scores and nothing waits."""

from __future__ import annotations

import threading

import numpy as np

from edge_agent.readings_queue import ReadingQueue
from shared.readings import ReadingsBlock


def _block(t0: float, n: int) -> ReadingsBlock:
    return ReadingsBlock(np.arange(t0, t0 + n, dtype=np.float64), ("a",), np.zeros((n, 1)))


def test_small_block_is_claimed_only_when_idle_and_nothing_is_queued() -> None:
    q = ReadingQueue(100)
    assert q.put_or_claim(_block(0, 1), 8) == (1, True)  # idle, empty: the producer scores it
    assert q.taken == 1 and len(q) == 0
    assert q.put_or_claim(_block(1, 1), 8) == (2, False)  # the turn is held: queued
    q.release()
    assert q.put_or_claim(_block(2, 1), 8) == (3, False)  # something is queued: behind it, in order
    assert q.put_or_claim(_block(3, 9), 8) == (12, False)  # too big to claim
    got = q.get(max_items=100, timeout=1)  # returns holding the turn
    assert [float(t) for b in got for t in b.ts] == [1, 2, *range(3, 12)]
    assert q.put_or_claim(_block(12, 1), 8) == (13, False)  # the scorer holds the turn
    q.release()
    got = q.get(max_items=100, timeout=1)
    assert [float(t) for b in got for t in b.ts] == [12]
    q.release()


def test_get_waits_for_a_producer_holding_the_turn() -> None:
    q = ReadingQueue(100)
    assert q.put_or_claim(_block(0, 1), 8)[1]
    done = threading.Event()
    out: list[list[ReadingsBlock]] = []

    def scorer() -> None:
        out.append(q.get(max_items=10, timeout=0.01))  # times out with nothing queued, yet waits for the turn
        done.set()

    t = threading.Thread(target=scorer)
    t.start()
    assert not done.wait(0.2)  # the producer still scores: the scorer must not run beside it
    q.release()
    assert done.wait(5)
    t.join()
    assert out == [[]]
    q.release()
