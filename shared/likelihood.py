"""Streaming anomaly likelihood: how unusual the recent raw scores are against their own history.

Raw scores differ in scale between models and streams; a likelihood in [0, 1] lets one threshold
serve them all.  As in Numenta's anomaly likelihood, the short moving average of (log-compressed)
raw scores is compared with a Gaussian fitted to its running history; the likelihood is one minus
the right-tail probability, reported on a log scale so the rare tail is spread out:

    m_t = mean(log1p(s_{t-k+1..t}))      L_t = 1 − Q((m_t − μ) / σ)      ℓ_t = ln(1 − L_t) / ln(1e−10)

ℓ_t = 0.5 is a tail probability of 1e−5.  μ and σ come from a prior (the model's calibration scores,
carried in the bundle) blended with the last ``history`` averages: no look-ahead, constant memory,
identical on hub and edge.

Two optional refinements, both causal:

* onsets only — ℓ is reported only where it exceeds every value of the previous ``onset_window``
  readings (0 elsewhere), so one sustained excursion yields one alarm rather than hundreds;
* range novelty — a reading beyond the range seen so far (the training range, then the stream's) by
  more than ``spatial_tolerance`` of that range gets ℓ = 1, whatever the model's error says.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.decision import DecisionMode
from shared.schema import doc, dump, load

_LOG_FLOOR = math.log(1e-10)


@dataclass(frozen=True)
class LikelihoodParams:
    """Post-processing of raw scores into a likelihood; carried in the bundle."""

    prior_mean: float = doc("Mean of the moving-averaged log1p scores on calibration windows.")
    prior_std: float = doc("Their standard deviation.")
    prior_weight: int = doc("How many observations the prior counts as against the running history.", default=100)
    history: int = doc("Moving averages kept in the running distribution.", default=2000)
    short_window: int = doc("Raw scores averaged before comparison.", default=8)
    threshold: float = doc("Log-scaled likelihood at or above which a window is anomalous (decide_on=likelihood).",
                           default=0.5)
    decide_on: str = doc("What the agent thresholds: 'score' (raw score vs scoring.threshold) or 'likelihood'.",
                         default="score")
    spatial_tolerance: float = doc("Range novelty: a reading beyond the range seen so far by more than this "
                                   "fraction of it gets likelihood 1 (negative = off).", default=-1.0)
    range_min: list[float] = doc("Per-feature minimum seen in training (start of the running range).",
                                 default_factory=list)
    range_max: list[float] = doc("Per-feature maximum seen in training.", default_factory=list)
    onset_window: int = doc("Report the likelihood only where it exceeds the previous N readings' (0 = off).",
                            default=0)

    def __post_init__(self) -> None:
        if self.prior_std <= 0 or self.history < 2 or self.short_window < 1 or self.prior_weight < 0:
            raise ValueError("prior_std > 0, history >= 2, short_window >= 1, prior_weight >= 0")
        if not 0 < self.threshold < 1:
            raise ValueError("likelihood threshold must be in (0, 1)")
        if self.decide_on not in set(DecisionMode):
            raise ValueError(f"decide_on must be one of {', '.join(DecisionMode)}")
        if len(self.range_min) != len(self.range_max) or self.onset_window < 0:
            raise ValueError("range_min and range_max need one value per feature; onset_window >= 0")

    def to_dict(self) -> dict[str, Any]:
        return dump(self)  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls, data: Any) -> LikelihoodParams:
        return load(cls, data)


def fit_prior(scores: np.ndarray, **overrides: Any) -> LikelihoodParams:
    """Prior from a sequence of normal raw scores (in stream order)."""
    short = int(overrides.get("short_window", 8))
    logs = np.log1p(np.maximum(np.asarray(scores, np.float64), 0.0))
    avg = np.convolve(logs, np.ones(short) / short, mode="valid") if len(logs) >= short else logs
    std = float(avg.std()) if len(avg) > 1 else 0.0
    return LikelihoodParams(prior_mean=float(avg.mean()) if len(avg) else 0.0, prior_std=max(std, 1e-3), **overrides)


def log_scale(likelihood: float) -> float:
    return min(1.0, math.log(1.0000000001 - likelihood) / _LOG_FLOOR)


class AnomalyLikelihood:
    """One stream's state. ``update`` takes raw scores in time order and returns ℓ for each."""

    def __init__(self, params: LikelihoodParams) -> None:
        self.params = params
        self._recent: deque[float] = deque(maxlen=params.short_window)
        self._history: deque[float] = deque()
        self._sum = 0.0
        self._sq = 0.0
        self._lo = np.asarray(params.range_min, np.float64)
        self._hi = np.asarray(params.range_max, np.float64)
        self._n = 0
        self._evicted = 0
        self._peaks: deque[tuple[int, float]] = deque()  # sliding max of the last onset_window values

    def _stats(self) -> tuple[float, float]:
        p = self.params
        n = len(self._history)
        w = p.prior_weight
        total = n + w
        if total == 0:
            return p.prior_mean, p.prior_std
        mean = (self._sum + w * p.prior_mean) / total
        second = (self._sq + w * (p.prior_std**2 + p.prior_mean**2)) / total
        return mean, math.sqrt(max(second - mean * mean, 1e-12))

    def update_one(self, score: float, reading: np.ndarray | None = None) -> float:
        """ℓ for one window's raw score; ``reading`` is its newest raw reading (for range novelty)."""
        lik = self._onset(self._likelihood(score))
        if reading is not None and self.params.spatial_tolerance >= 0 and self._novel(reading):
            return 1.0  # novelty is reported every time; it does not mask later onsets
        return lik

    def _novel(self, reading: np.ndarray) -> bool:
        r = np.asarray(reading, np.float64)
        if len(self._lo) != len(r):
            self._lo, self._hi = r.copy(), r.copy()
            return False
        ok = np.isfinite(r)
        margin = self.params.spatial_tolerance * (self._hi - self._lo)
        novel = bool(np.any(ok & ((r > self._hi + margin) | (r < self._lo - margin))))
        self._lo = np.where(ok, np.minimum(self._lo, r), self._lo)
        self._hi = np.where(ok, np.maximum(self._hi, r), self._hi)
        return novel

    def _onset(self, lik: float) -> float:
        k = self.params.onset_window
        if k == 0:
            return lik
        i = self._n
        self._n += 1
        while self._peaks and self._peaks[0][0] < i - k:
            self._peaks.popleft()
        previous = self._peaks[0][1] if self._peaks else -1.0
        while self._peaks and self._peaks[-1][1] <= lik:
            self._peaks.pop()
        self._peaks.append((i, lik))
        return lik if lik > previous else 0.0

    def _likelihood(self, score: float) -> float:
        v = math.log1p(max(score, 0.0)) if math.isfinite(score) else 50.0
        self._recent.append(v)
        avg = sum(self._recent) / len(self._recent)
        mean, std = self._stats()
        z = (avg - mean) / max(std, self.params.prior_std * 0.1)
        tail = 0.5 * math.erfc(z / math.sqrt(2))
        # Learn after judging: the current window is compared only with what came before it.
        self._history.append(avg)
        self._sum += avg
        self._sq += avg * avg
        if len(self._history) > self.params.history:
            old = self._history.popleft()
            self._sum -= old
            self._sq -= old * old
            self._evicted += 1
            if self._evicted % self.params.history == 0:  # re-sum once per turnover: no rounding drift
                self._sum = math.fsum(self._history)
                self._sq = math.fsum(v * v for v in self._history)
        return log_scale(1.0 - tail)

    def update(self, scores: np.ndarray, readings: np.ndarray | None = None) -> np.ndarray:
        """ℓ for each score in order; ``readings`` (newest raw reading per window) feed range novelty."""
        if readings is None or self.params.spatial_tolerance < 0:
            return np.array([self.update_one(float(s)) for s in scores])
        return np.array([self.update_one(float(s), r) for s, r in zip(scores, readings, strict=True)])
