"""Reading sources other than the agent's own MQTT subscription: CSV replay."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

from edge_agent.config import CsvSource
from edge_agent.readings_queue import Reading
from shared.csvdata import read_series

log = logging.getLogger(__name__)


class CsvReplay(threading.Thread):
    """Feeds a CSV file to the agent at ``rate_hz`` readings per second (0 = as fast as accepted)."""

    def __init__(self, cfg: CsvSource, sink: Callable[[list[Reading]], None], stop: threading.Event) -> None:
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
        rows = [
            {f: (None if math.isnan(v) else float(v)) for f, v in zip(series.features, row, strict=True)}
            for row in series.values
        ]
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
                    stamps = file_ts[i : i + batch].tolist()
                elif rate:  # the replay clock: when each reading is (due to be) emitted
                    now = time.time()
                    stamps = [now + k / rate for k in range(len(chunk))]
                else:  # as fast as possible: keep the file's spacing, shifted to now
                    stamps = (wall_start + file_ts[i : i + batch] - file_ts[0]).tolist()
                self.sink(list(zip(stamps, chunk, strict=True)))
                self.emitted += len(chunk)
            if not self.cfg.loop:
                break
        log.info("csv source %s finished after %d readings", self.cfg.path, self.emitted)
        self.finished.set()
