"""Reading sources other than MQTT subscriptions: CSV replay, resumable after a restart.

The agent's commit (``Agent._commit_readings``) stores, in the same outbox transaction as the sync rows
and the high-water mark, the row after the last one the scorer had taken (``progress``); a restarted
agent replays from there, so a CSV is scored and synced once across SIGKILLs and restarts (rows taken
after the last commit are replayed again: up to one sync interval of them).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from edge_agent.config import CsvSource
from shared.csvdata import read_series
from shared.readings import ReadingsBlock

log = logging.getLogger(__name__)


def csv_progress_key(cfg: CsvSource) -> str:
    """Outbox meta key holding where a CSV replay resumes (the next row to emit)."""
    return f"csv_offset:{cfg.path}"


class CsvReplay(threading.Thread):
    """Feeds a CSV file to the agent at ``rate_hz`` readings per second (0 = as fast as accepted).

    ``sink`` queues a block and returns the queue's position after it (``ReadingQueue.put``); ``resume_row``
    is the first row of the first pass (from :func:`csv_progress_key`'s meta; beyond the file = start over).
    """

    def __init__(self, cfg: CsvSource, sink: Callable[[ReadingsBlock], int], stop: threading.Event,
                 resume_row: int = 0) -> None:
        super().__init__(name="csv-replay", daemon=True)
        self.cfg = cfg
        self.sink = sink
        self.stop_event = stop
        self.resume_row = resume_row
        self.emitted = 0
        self.finished = threading.Event()
        self._marks: deque[tuple[int, int]] = deque()  # (queue position after a block, the row after it)
        self._lock = threading.Lock()
        self._committed: int | None = None

    def progress(self, taken: int) -> int | None:
        """The row to resume from once the scorer has taken ``taken`` readings (None: no progress since the
        last call)."""
        row = None
        with self._lock:
            while self._marks and self._marks[0][0] <= taken:
                row = self._marks.popleft()[1]
        if row is None or row == self._committed:
            return None
        self._committed = row
        return row

    def run(self) -> None:
        try:
            series = read_series(self.cfg.path, self.cfg.timestamp_column)
        except (OSError, ValueError) as exc:
            log.error("csv source %s: %s", self.cfg.path, exc)
            self.finished.set()
            return
        features = tuple(series.features)
        rows = series.values
        first = self.resume_row if 0 < self.resume_row < len(rows) else 0
        if first:
            log.info("csv source %s resumes at row %d of %d (the last run stored the rows before it)",
                     self.cfg.path, first, len(rows))
        elif self.resume_row >= len(rows) and not self.cfg.loop:
            log.info("csv source %s: the last run replayed all %d rows; nothing to do", self.cfg.path, len(rows))
            self.finished.set()
            return
        rate = self.cfg.rate_hz
        batch = 1 if rate and rate <= 200 else 64
        file_ts = series.timestamps
        while not self.stop_event.is_set():
            start, wall_start = time.monotonic(), time.time()
            for i in range(first, len(rows), batch):
                if rate:
                    delay = start + (i - first) / rate - time.monotonic()
                    if delay > 0 and self.stop_event.wait(delay):
                        break
                chunk = rows[i : i + batch]
                if not self.cfg.restamp:
                    stamps = file_ts[i : i + batch]
                elif rate:  # the replay clock: when each reading is (due to be) emitted
                    now = time.time()
                    stamps = now + np.arange(len(chunk)) / rate
                else:  # as fast as possible: keep the file's spacing, shifted to now
                    stamps = wall_start + file_ts[i : i + batch] - file_ts[first]
                position = self.sink(ReadingsBlock(np.asarray(stamps, dtype=np.float64), features, chunk))
                with self._lock:
                    self._marks.append((position, i + len(chunk)))
                self.emitted += len(chunk)
            first = 0
            if not self.cfg.loop:
                break
        log.info("csv source %s finished after %d readings", self.cfg.path, self.emitted)
        self.finished.set()
