"""Reading sources other than the agent's own MQTT subscription: CSV replay."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np

from edge_agent.config import CsvSource
from shared.csvdata import read_series
from shared.readings import ReadingsBlock

log = logging.getLogger(__name__)


class CsvReplay(threading.Thread):
    """Feeds a CSV file to the agent at ``rate_hz`` readings per second (0 = as fast as accepted)."""

    def __init__(self, cfg: CsvSource, sink: Callable[[ReadingsBlock], object], stop: threading.Event) -> None:
        super().__init__(name="csv-replay", daemon=True)
        self.cfg = cfg
        self.sink = sink
        self.stop_event = stop
        self.emitted = 0
        self.finished = threading.Event()

    def run(self) -> None:
        try:
            series = read_series(self.cfg.path, self.cfg.timestamp_column)
        except (OSError, ValueError) as exc:
            log.error("csv source %s: %s", self.cfg.path, exc)
            self.finished.set()
            return
        features = tuple(series.features)
        rows = series.values
        rate = self.cfg.rate_hz
        batch = 1 if rate and rate <= 200 else 64
        file_ts = series.timestamps
        while not self.stop_event.is_set():
            start, wall_start = time.monotonic(), time.time()
            for i in range(0, len(rows), batch):
                if rate:
                    delay = start + i / rate - time.monotonic()
                    if delay > 0 and self.stop_event.wait(delay):
                        break
                chunk = rows[i : i + batch]
                if not self.cfg.restamp:
                    stamps = file_ts[i : i + batch]
                elif rate:  # the replay clock: when each reading is (due to be) emitted
                    now = time.time()
                    stamps = now + np.arange(len(chunk)) / rate
                else:  # as fast as possible: keep the file's spacing, shifted to now
                    stamps = wall_start + file_ts[i : i + batch] - file_ts[0]
                self.sink(ReadingsBlock(np.asarray(stamps, dtype=np.float64), features, chunk))
                self.emitted += len(chunk)
            if not self.cfg.loop:
                break
        log.info("csv source %s finished after %d readings", self.cfg.path, self.emitted)
        self.finished.set()
