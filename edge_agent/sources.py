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
        batch = 1 if self.cfg.rate_hz and self.cfg.rate_hz <= 200 else 64
        while not self.stop_event.is_set():
            start = time.monotonic()
            for i in range(0, len(rows), batch):
                if self.cfg.rate_hz:
                    due = start + i / self.cfg.rate_hz
                    delay = due - time.monotonic()
                    if delay > 0 and self.stop_event.wait(delay):
                        break
                now = time.time()
                chunk = rows[i : i + batch]
                stamps = [now] * len(chunk) if self.cfg.restamp else series.timestamps[i : i + batch].tolist()
                self.sink(list(zip(stamps, chunk, strict=True)))
                self.emitted += len(chunk)
            if not self.cfg.loop:
                break
        log.info("csv source %s finished after %d readings", self.cfg.path, self.emitted)
        self.finished.set()
