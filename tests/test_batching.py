"""The ingest queue (``Batcher``): batches of at most max_items, closed early when traffic pauses, a full
queue blocks the producer (the broker keeps the rest), and stop returns everything queued, then None."""

from __future__ import annotations

import threading
import time

from cloud_hub.ingest.batching import Batcher, Inbound
from shared.protocol import Channel


def _item(i: int) -> Inbound:
    return Inbound(Channel.ANOMALY, "gw", i, 0.0, i, 0)


def test_batches_are_cut_at_max_items_in_order() -> None:
    b = Batcher(max_items=4, wait_s=0.0, idle_s=0.0, maxsize=100)
    for i in range(10):
        b.put(_item(i))
    sizes, seen = [], []
    while not b.empty():
        batch = b.next()
        assert batch is not None
        sizes.append(len(batch))
        seen += [it.message for it in batch]
    assert sizes == [4, 4, 2] and seen == list(range(10))


def test_a_batch_waits_for_stragglers_until_traffic_pauses() -> None:
    # idle_s 1 s: a loaded machine can stall the trickling thread for a fraction of a second between puts
    b = Batcher(max_items=100, wait_s=30.0, idle_s=1.0, maxsize=100)
    b.put(_item(0))
    started = threading.Event()

    def trickle() -> None:
        started.set()
        for i in range(1, 4):
            b.put(_item(i))

    threading.Thread(target=trickle).start()
    started.wait(5)
    t0 = time.monotonic()
    batch = b.next()
    assert batch is not None and [it.message for it in batch] == [0, 1, 2, 3]
    assert time.monotonic() - t0 < 20.0  # closed by the idle gap, not the 30 s wait


def test_full_queue_blocks_the_producer_until_the_writer_takes_a_batch() -> None:
    b = Batcher(max_items=2, wait_s=0.0, idle_s=0.0, maxsize=2)
    b.put(_item(0))
    b.put(_item(1))
    done = threading.Event()
    threading.Thread(target=lambda: (b.put(_item(2)), done.set())).start()
    assert not done.wait(0.3)  # blocked: nothing is dropped
    assert [it.message for it in b.next() or []] == [0, 1]
    assert done.wait(5)
    assert len(b) == 1


def test_stop_returns_what_is_queued_then_none_and_wakes_a_blocked_writer() -> None:
    b = Batcher(max_items=10, wait_s=1.0, idle_s=0.5, maxsize=10)
    out: list[object] = []
    writer = threading.Thread(target=lambda: out.append(b.next()))
    writer.start()
    b.stop()
    writer.join(5)
    assert out == [None]
    b2 = Batcher(max_items=10, wait_s=1.0, idle_s=0.5, maxsize=10)
    for i in range(3):
        b2.put(_item(i))
    b2.stop()
    assert [it.message for it in b2.next() or []] == [0, 1, 2]
    assert b2.next() is None


def test_tune_gc_freezes_startup_and_raises_the_young_threshold() -> None:
    """``serve`` (and the ingest bench) call it after startup; run in a child so this process keeps its GC."""
    import subprocess
    import sys

    code = ("import gc; from cloud_hub.ingest.service import GC_THRESHOLDS, tune_gc; tune_gc(); "
            "assert gc.get_threshold() == GC_THRESHOLDS and GC_THRESHOLDS[0] > 700, gc.get_threshold(); "
            "assert gc.get_freeze_count() > 10_000, gc.get_freeze_count(); "
            "x = []; x.append(x); del x; assert gc.collect() >= 1  # cycles are still collected")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
