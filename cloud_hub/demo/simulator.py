"""Sensor simulator: correlated channels with a daily cycle and noise, plus injected anomalies.

A "day" lasts ``period_s`` seconds so the demo shows several cycles in minutes.  Timestamps are the
wall clock, so reading→report latency is real.  Every injected anomaly is recorded as a labelled
span; the demo scores detections against them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

FEATURES = ["temperature", "humidity", "power", "vibration"]
KINDS = ["spike", "level_shift", "drift", "stuck", "noise_burst"]
# (amplitude of daily pattern, noise σ) per feature
_AMP = np.array([5.0, 8.0, 1.2, 0.6])
_NOISE = np.array([0.15, 0.4, 0.05, 0.04])
_BASE = np.array([21.0, 55.0, 3.0, 1.0])


@dataclass
class Injected:
    device: str
    kind: str
    feature: str
    start: float
    end: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class _Active:
    span: Injected
    channel: int
    magnitude: float
    held: float | None = None


class DeviceSimulator:
    def __init__(self, device: str, seed: int, period_s: float, rate_hz: float) -> None:
        self.device = device
        self.rng = np.random.default_rng(seed)
        self.period = period_s
        self.rate = rate_hz
        self.offset = self.rng.normal(0, 1, len(FEATURES)) * _AMP * 0.2
        self.phase = self.rng.uniform(0, 0.3)
        self.active: _Active | None = None
        self.injected: list[Injected] = []
        self.next_injection: float | None = None

    def normal(self, t: float) -> np.ndarray:
        d = math.sin(2 * math.pi * (t / self.period + self.phase))
        fast = math.sin(2 * math.pi * t / (self.period / 6))
        pattern = np.array([d, -d, d + 0.3 * fast, 0.5 * fast + 0.3 * d])
        return _BASE + self.offset + _AMP * pattern + self.rng.normal(0, 1, len(FEATURES)) * _NOISE

    def schedule(self, t: float, min_gap: float, max_gap: float) -> None:
        """Start injecting anomalies from time t onward, one every min_gap..max_gap seconds."""
        self.gaps = (min_gap, max_gap)
        self.next_injection = t + self.rng.uniform(min_gap / 2, max_gap / 2)

    def stop_injecting(self) -> None:
        self.next_injection = None

    def reading(self, t: float) -> dict[str, float | None]:
        x = self.normal(t)
        if self.active is None and self.next_injection is not None and t >= self.next_injection:
            self._start(t)
        a = self.active
        if a is not None:
            c, span = a.channel, a.span
            progress = (t - span.start) / max(span.end - span.start, 1e-9)
            if span.kind in ("spike", "level_shift"):
                x[c] += a.magnitude
            elif span.kind == "drift":
                x[c] += a.magnitude * progress
            elif span.kind == "stuck":
                if a.held is None:
                    a.held = float(x[c])
                x[c] = a.held
            elif span.kind == "noise_burst":
                x[c] += self.rng.normal(0, 1) * _NOISE[c] * a.magnitude
            if t >= span.end:
                self.active = None
                if self.next_injection is not None:
                    self.next_injection = t + self.rng.uniform(*self.gaps)
        values: dict[str, float | None] = {f: float(v) for f, v in zip(FEATURES, x, strict=True)}
        if self.rng.random() < 0.005:  # occasional missing value, filled by interpolation at the edge
            values[FEATURES[int(self.rng.integers(len(FEATURES)))]] = None
        return values

    def _start(self, t: float) -> None:
        kind = KINDS[len(self.injected) % len(KINDS)]
        channel = int(self.rng.integers(len(FEATURES)))
        sign = self.rng.choice([-1.0, 1.0])
        if kind == "spike":
            duration, magnitude = 2.5 / self.rate, sign * _AMP[channel] * 0.8
        elif kind == "level_shift":
            duration, magnitude = 3.0, sign * _AMP[channel] * 0.4
        elif kind == "drift":
            duration, magnitude = 5.0, sign * _AMP[channel] * 0.8
        elif kind == "stuck":
            duration, magnitude = 8.0, 0.0
        else:
            duration, magnitude = 3.0, 12.0
        span = Injected(self.device, kind, FEATURES[channel], t, t + duration)
        self.injected.append(span)
        self.active = _Active(span, channel, float(magnitude))
