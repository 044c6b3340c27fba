"""Hub-side isolation: an exception while handling one message is counted as ``internal_error`` by
channel and logged at most once per channel per interval with its traceback (no traceback storm)."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter


class InternalErrors:
    def __init__(self, logger: logging.Logger, log_every_s: float = 30.0) -> None:
        self._log = logger
        self._every = log_every_s
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._last: dict[str, float] = {}

    def record(self, channel: str, what: str, exc: BaseException) -> None:
        with self._lock:
            self._counts[channel] += 1
            now = time.monotonic()
            emit = now - self._last.get(channel, -self._every) >= self._every
            if emit:
                self._last[channel] = now
            total = self._counts[channel]
        if emit:
            self._log.error("internal error on %s (%s; %d so far on this channel, traceback shown at most "
                            "every %.0f s)", channel, what, total, self._every, exc_info=exc)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())
