"""Detection metrics shared by the demo, benchmarks and tests."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


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


@dataclass(frozen=True)
class Latency:
    """Per-call latency figures of a timed operation, in milliseconds."""

    p50_ms: float
    p99_ms: float
    max_ms: float
    calls: int


def time_calls(call: Callable[[int], object], calls: int, warmup: int = 5) -> Latency:
    """Time ``call(i)`` for i in 0..calls-1 after ``warmup`` untimed calls (the first invocations allocate)."""
    for i in range(warmup):
        call(i)
    times = []
    for i in range(calls):
        t = time.perf_counter()
        call(warmup + i)
        times.append((time.perf_counter() - t) * 1000)
    return Latency(p50_ms=percentile(times, 50), p99_ms=percentile(times, 99), max_ms=max(times), calls=calls)


def rss_mb(pid: int | None = None) -> float:
    """Resident set size of this process (or ``pid``) now, in MB (Linux ``/proc``; elsewhere peak RSS
    of this process, NaN for another one)."""
    try:
        for line in Path(f"/proc/{pid or 'self'}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    if pid is not None:
        return float("nan")
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used, all threads (Linux ``/proc``; NaN elsewhere): a rate per
    CPU second barely moves with the machine's load, unlike a wall-clock rate."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")
