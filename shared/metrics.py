"""Detection metrics shared by the demo, benchmarks and tests."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class EventMatch:
    detected: list[bool]  # per labelled span
    false_alarms: int  # events outside every span (+ grace)
    events_in_spans: int


def match_events(events: list[tuple[str, float]], spans: list[tuple[str, float, float]], grace_s: float) -> EventMatch:
    """Event-level scoring: a span is detected when an event of its device falls in [start, end + grace];
    an event that falls in no span of its device is a false alarm."""
    detected = [False] * len(spans)
    false_alarms = hits = 0
    for device, ts in events:
        inside = False
        for i, (d, start, end) in enumerate(spans):
            if d == device and start <= ts <= end + grace_s:
                detected[i] = True
                inside = True
        if inside:
            hits += 1
        else:
            false_alarms += 1
    return EventMatch(detected, false_alarms, hits)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank-interpolated percentile without numpy (usable anywhere)."""
    if not values:
        return math.nan
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)
