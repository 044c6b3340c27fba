"""What to upload for retraining (it only chooses; ``Agent._send`` and the outbox deliver).

``full`` keeps every admitted reading.  ``smart`` keeps, as whole windows of raw readings (so the
hub can rebuild training windows from them):

1. every window the model flagged (priority 0),
2. hard examples: windows whose score lies within ``hard_margin`` of the threshold (priority 1),
3. a uniform reservoir sample of ``sample_windows`` normal windows per interval (priority 2).

:meth:`SyncSelector.take` turns the pending rows into batches, highest priority and oldest first; the
agent puts them in the durable outbox at once (it acknowledges gateway readings only after that), and
the outbox sender spends the bandwidth cap ``bandwidth_bytes_s`` on them: rows held back by the cap wait
on disk, bounded by the outbox budget (sync first to go, counted), never in memory.  In memory are only
the rows between two commits and the interval's reservoir (bounded by ``max_buffered_rows``; the
lowest priority, oldest rows go first, counted in ``dropped``).  Every batch holds at most
MAX_SYNC_ROWS rows and has its own ``batch_id``, so delivery through the outbox is resumable.
"""

from __future__ import annotations

import enum
import random
import threading
import uuid
from collections import Counter, deque
from dataclasses import dataclass

import numpy as np

from edge_agent.config import SyncConfig, SyncPolicy
from edge_agent.detector import PushResult
from shared.protocol import MAX_MESSAGE_BYTES, MAX_SYNC_ROWS, PROTOCOL_VERSION, SyncBatch, encode, pack_rows
from shared.readings import with_nulls

EMITTED_RANGES = 4096  # chosen row ranges remembered to keep samples from repeating rows


class Priority(enum.IntEnum):
    FLAGGED = 0
    HARD = 1
    SAMPLE = 2
    ALL = 3  # full policy


@dataclass(frozen=True)
class Segment:
    """Consecutive admitted readings chosen for upload."""

    priority: Priority
    features: tuple[str, ...]
    ts: np.ndarray  # (n,)
    values: np.ndarray  # (n, f)
    flags: np.ndarray  # (n,) int8: 1 where a flagged window ends

    def __len__(self) -> int:
        return len(self.ts)

    def tail(self, start: int) -> Segment:
        return Segment(self.priority, self.features, self.ts[start:], self.values[start:], self.flags[start:])


class SyncSelector:
    """Fed by the scorer thread (:meth:`offer`), drained by housekeeping (:meth:`take`)."""

    def __init__(self, cfg: SyncConfig, seed: int | None = None) -> None:
        self.cfg = cfg
        self._lock = threading.Lock()
        self._pending: list[Segment] = []
        self._rows = 0
        self._reservoir: list[Segment] = []
        self._seen = 0  # normal windows offered to the reservoir this interval
        # The stdlib generator, not numpy.random: importing that costs the resident agent ~2 MB.
        self._rng = random.Random(seed)
        self._selected_to = -np.inf  # newest ts already chosen as flagged/hard (windows overlap)
        # ts ranges of rows already chosen (flagged/hard runs, flushed samples): each reading is uploaded
        # once even where a sampled normal window overlaps a flagged one or another sample.
        self._emitted: deque[tuple[float, float]] = deque(maxlen=EMITTED_RANGES)
        self.dropped: Counter[str] = Counter()  # rows dropped, by priority name

    @property
    def pending_rows(self) -> int:
        with self._lock:
            return self._rows + sum(len(s) for s in self._reservoir)

    # ------------------------------------------------------------------ choosing

    def offer(self, pushed: PushResult) -> None:
        """Consider what one detector push admitted and scored."""
        if pushed.admitted == 0:
            return
        rows = pushed.rows
        n = len(rows)
        flags = np.zeros(n, dtype=np.int8)
        scored = pushed.scored
        if scored is not None and len(scored):
            # A stuck channel alarms once per episode, but every stuck window stays out of retraining.
            flagged = scored.anomalous if scored.stuck is None else scored.anomalous | scored.stuck.any(axis=1)
            flags[n - len(scored) :] = flagged
        with self._lock:
            if self.cfg.policy == SyncPolicy.FULL or not pushed.window:
                # smart without a model: nothing to choose on, and the hub needs data for a first model;
                # everything goes, at the lowest priority (within the cap, first dropped by the bound).
                priority = Priority.ALL if self.cfg.policy == SyncPolicy.FULL else Priority.SAMPLE
                new = n - pushed.admitted
                self._add(Segment(priority, rows.features, rows.ts[new:], rows.values[new:], flags[new:]))
            else:
                self._choose(pushed, flags)
            self._bound()

    def _choose(self, pushed: PushResult, flags: np.ndarray) -> None:
        rows, scored = pushed.rows, pushed.scored
        n = len(rows)
        w = pushed.window
        if scored is None or not len(scored):
            return  # the model's first window is not complete yet
        ends = np.arange(n - len(scored), n)
        flagged = flags[n - len(scored) :].astype(bool)  # the decision's flags and every stuck window
        ref = scored.likelihood if scored.likelihood_threshold is not None else scored.scores
        thr = scored.likelihood_threshold if scored.likelihood_threshold is not None else scored.threshold
        hard = ~flagged & (np.abs(ref - thr) <= self.cfg.hard_margin * abs(thr))
        fresh = (rows.ts > self._selected_to) & ~self._taken(rows.ts)  # rows an earlier window already took
        flagged_rows = _cover(ends[flagged], w, n) & fresh
        hard_rows = _cover(ends[hard], w, n) & fresh & ~flagged_rows
        for covered, priority in ((flagged_rows, Priority.FLAGGED), (hard_rows, Priority.HARD)):
            self._add_runs(pushed, covered, flags, priority)
        if flagged_rows.any() or hard_rows.any():
            self._selected_to = float(rows.ts[np.flatnonzero(flagged_rows | hard_rows)[-1]])
        self._sample(pushed, ends[~flagged & ~hard], w, flags)

    def _uniform(self, n: int) -> np.ndarray:
        """``n`` uniform draws in [0, 1): 53 random bits each, drawn in one call."""
        bits = self._rng.getrandbits(64 * n).to_bytes(8 * n, "little")
        return (np.frombuffer(bits, np.uint64) >> np.uint64(11)).astype(np.float64) * 2.0**-53

    def _add_runs(self, pushed: PushResult, covered: np.ndarray, flags: np.ndarray, priority: Priority) -> None:
        rows = pushed.rows
        edges = np.flatnonzero(np.diff(np.concatenate([[0], covered.view(np.int8), [0]])))
        for a, b in zip(edges[::2], edges[1::2], strict=True):
            self._add(Segment(priority, rows.features, rows.ts[a:b], rows.values[a:b], flags[a:b]))
            self._emitted.append((float(rows.ts[a]), float(rows.ts[b - 1])))

    def _taken(self, ts: np.ndarray) -> np.ndarray:
        """Which of ``ts`` lie in a range of rows already chosen."""
        if not self._emitted or not len(ts):
            return np.zeros(len(ts), dtype=bool)
        ranges = np.asarray(self._emitted)
        return np.asarray(((ts[:, None] >= ranges[:, 0]) & (ts[:, None] <= ranges[:, 1])).any(axis=1))

    def _sample(self, pushed: PushResult, ends: np.ndarray, w: int, flags: np.ndarray) -> None:
        """Algorithm R over the interval's normal windows; Python work only for the few replacements."""
        k = self.cfg.sample_windows
        if k == 0 or not len(ends):
            return
        counts = self._seen + np.arange(len(ends))
        slots = np.where(counts < k, counts, (self._uniform(len(ends)) * (counts + 1)).astype(np.int64))
        self._seen += len(ends)
        rows = pushed.rows
        for i in np.flatnonzero(slots < k).tolist():
            e = int(ends[i])
            seg = Segment(Priority.SAMPLE, rows.features, rows.ts[e - w + 1 : e + 1].copy(),
                          rows.values[e - w + 1 : e + 1].copy(), flags[e - w + 1 : e + 1].copy())
            slot = int(slots[i])
            if slot < len(self._reservoir):
                self._reservoir[slot] = seg
            else:
                self._reservoir.append(seg)

    def _add(self, seg: Segment) -> None:
        if len(seg):
            self._pending.append(seg)
            self._rows += len(seg)

    def _bound(self) -> None:
        """Drop the lowest-priority, oldest rows beyond max_buffered_rows."""
        excess = self._rows - self.cfg.max_buffered_rows
        if excess <= 0:
            return
        for priority in sorted(Priority, reverse=True):
            for i, seg in enumerate(self._pending):
                if excess <= 0:
                    break
                if seg.priority != priority or not len(seg):
                    continue
                cut = min(excess, len(seg))
                self._pending[i] = seg.tail(cut)
                self._rows -= cut
                excess -= cut
                self.dropped[priority.name.lower()] += cut
        self._pending = [s for s in self._pending if len(s)]

    # ------------------------------------------------------------------ sending

    def take(self, device: str, model_version: int | None, *, reservoir: bool = True) -> list[SyncBatch]:
        """Every pending row as batches, highest priority first.  ``reservoir``: the interval is over, its
        sample joins (False for the agent's reading commits between intervals)."""
        with self._lock:
            if reservoir:
                self._add_reservoir()
            order = sorted(range(len(self._pending)), key=lambda i: (self._pending[i].priority, i))
            queue = [self._pending[i] for i in order]
            out: list[SyncBatch] = []
            while queue:
                batch, used = self._batch(queue, device, model_version)
                out.append(batch)
                queue = _consume(queue, used)
            self._pending = queue
            self._rows = 0
            return out

    def _add_reservoir(self) -> None:
        for seg in sorted(self._reservoir, key=lambda s: float(s.ts[0])):
            keep = ~self._taken(seg.ts)  # rows a flagged/hard run or an overlapping sample already holds
            if keep.any():
                seg = Segment(seg.priority, seg.features, seg.ts[keep], seg.values[keep], seg.flags[keep])
                self._add(seg)
                self._emitted.append((float(seg.ts[0]), float(seg.ts[-1])))
        self._reservoir, self._seen = [], 0
        self._bound()

    def _batch(self, queue: list[Segment], device: str, model_version: int | None) -> tuple[SyncBatch, int]:
        """One message from the head of ``queue`` (same features, <= MAX_SYNC_ROWS, under the size limit)."""
        features = queue[0].features
        limit = min(MAX_SYNC_ROWS, max(1, (MAX_MESSAGE_BYTES // 2) // (8 * (len(features) + 1))))
        while True:
            parts, n = [], 0
            for seg in queue:
                if seg.features != features or n >= limit:
                    break
                parts.append(seg.tail(0) if n + len(seg) <= limit else _head(seg, limit - n))
                n += len(parts[-1])
            table = np.column_stack([np.concatenate([p.ts for p in parts]), np.concatenate([p.values for p in parts])])
            flags = np.concatenate([p.flags for p in parts]).astype(int).tolist()
            rows: list[list[float | None]] = []
            packed = ""
            if self.cfg.compress:
                packed = pack_rows(table)
            else:
                rows = with_nulls(table)
            batch = SyncBatch(v=PROTOCOL_VERSION, device=device, batch_id=uuid.uuid4().hex, features=list(features),
                              rows=rows, flags=flags, model_version=model_version, packed=packed)
            try:
                encode(batch)
            except ValueError:
                if limit == 1:
                    raise
                limit = max(1, limit // 2)
                continue
            return batch, n


def _cover(ends: np.ndarray, w: int, n: int) -> np.ndarray:
    """Rows (of n) covered by the windows of length ``w`` ending at ``ends``."""
    delta = np.zeros(n + 1, dtype=np.int64)
    np.add.at(delta, np.maximum(ends - w + 1, 0), 1)
    np.add.at(delta, ends + 1, -1)
    return np.cumsum(delta[:n]) > 0


def _head(seg: Segment, n: int) -> Segment:
    return Segment(seg.priority, seg.features, seg.ts[:n], seg.values[:n], seg.flags[:n])


def _consume(queue: list[Segment], n: int) -> list[Segment]:
    """``queue`` without its first ``n`` rows."""
    out = []
    for seg in queue:
        if n >= len(seg):
            n -= len(seg)
            continue
        out.append(seg.tail(n) if n else seg)
        n = 0
    return out
