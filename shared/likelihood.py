"""Streaming anomaly likelihood: how unusual the recent raw scores are against their own history.

Raw scores differ in scale between models and streams; a likelihood in [0, 1] lets one threshold
serve them all.  As in Numenta's anomaly likelihood, the short moving average of (log-compressed)
raw scores is compared with a Gaussian fitted to its running history; the likelihood is one minus
the right-tail probability, reported on a log scale so the rare tail is spread out:

    m_t = mean(log1p(s_{t-k+1..t}))      L_t = 1 − Q((m_t − μ) / σ)      ℓ_t = ln(1 − L_t) / ln(1e−10)

ℓ_t = 0.5 is a tail probability of 1e−5.  μ and σ come from a prior (the model's calibration scores,
carried in the bundle) blended with the last ``history`` averages: no look-ahead, constant memory,
identical on hub and edge.

Optional refinements, all causal and all learned on the stream itself (no retraining):

* deviation — a model-free second opinion: each reading's robust distance from the median of the
  previous ``deviation_window`` readings (in median absolute deviations, the largest over features)
  goes through a likelihood of its own, primed on its first ``deviation_warmup`` scores on the stream;
  ℓ is the larger of the two.  It catches what a model trained on little data does not model (a
  level the model reconstructs well but the stream has never dwelt on) and carries over model swaps;
* seasonal context — a model-free opinion on *when*: each reading's robust distance from the median of
  the readings seen before in the same time slot (hour of day × weekday, from the readings' own
  timestamps: ``seasonal_period`` / ``seasonal_slots``), in median absolute deviations, through a
  likelihood of its own; a slot speaks only once it was seen in ``seasonal_min`` earlier periods (weeks
  of stream), so a value normal in range but unusual for its hour (a holiday, a missing daily peak) is
  seen.  It re-arms on its own (``rearm``): its alarms neither silence nor are silenced by the others';
* onsets only — ℓ is reported only where it exceeds every value of the previous ``onset_window``
  readings (0 elsewhere), so one sustained excursion yields one alarm rather than hundreds;
* re-arm — ℓ is reported only where none of the previous ``rearm`` readings reached ``rearm_level``:
  one alarm per excursion, the next once the stream has been quiet for ``rearm`` readings (unlike
  onsets, a smaller excursion after a quiet stretch still alarms);
* range novelty — a reading beyond the range seen so far (the training range, then the stream's) by
  more than ``spatial_tolerance`` of that range gets ℓ = 1, whatever the model's error says.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.schema import doc, dump, load

_LOG_FLOOR = math.log(1e-10)


@dataclass(frozen=True)
class LikelihoodParams:
    """Post-processing of raw scores into a likelihood; carried in the bundle (its threshold and whether the
    agent decides on it are the bundle's decision section, shared/decision.py)."""

    prior_mean: float = doc("Mean of the moving-averaged log1p scores on calibration windows.")
    prior_std: float = doc("Their standard deviation.")
    prior_weight: int = doc("How many observations the prior counts as against the running history.", default=100)
    history: int = doc("Moving averages kept in the running distribution.", default=2000)
    short_window: int = doc("Raw scores averaged before comparison.", default=8)
    spatial_tolerance: float = doc("Range novelty: a reading beyond the range seen so far by more than this "
                                   "fraction of it gets likelihood 1 (negative = off).", default=-1.0)
    range_min: list[float] = doc("Per-feature minimum seen in training (start of the running range).",
                                 default_factory=list)
    range_max: list[float] = doc("Per-feature maximum seen in training.", default_factory=list)
    onset_window: int = doc("Report the likelihood only where it exceeds the previous N readings' (0 = off).",
                            default=0)
    rearm: int = doc("Report the likelihood only where none of the previous N readings' reached `rearm_level` "
                     "(0 = off): one alarm per excursion, re-armed after N quiet readings.", default=0)
    rearm_max: int = doc("Longest silence re-arming may impose: a reading reaching `rearm_level` this many "
                         "readings after the last reported alarm is reported even if the stream never stayed quiet "
                         "(0 = no limit).", default=0)
    rearm_level: float = doc("Likelihood that counts as an alarm for re-arming (normally the decision's "
                             "likelihood threshold).", default=0.5)
    deviation_window: int = doc("Model-free second opinion: distance of each reading from the median of the "
                                "previous N readings in median absolute deviations, through its own likelihood; "
                                "the larger likelihood is reported (0 = off).", default=0)
    deviation_warmup: int = doc("Deviation (and seasonal) scores that prime their likelihood on the stream before "
                                "it reports anything.", default=300)
    seasonal_period: int = doc("Seasonal context: the period in seconds of the time-slot profile (86400 = a day, "
                               "604800 = a week; 0 = off). Needs the readings' timestamps.", default=0)
    seasonal_slots: int = doc("Slots per period (168 for hour of day x weekday over a week).", default=168)
    seasonal_depth: int = doc("Readings kept per slot (the newest): the slot's median and MAD are over them.",
                              default=32)
    seasonal_min: int = doc("Earlier periods a slot must have been seen in before its deviation is scored "
                            "(until then: 0).", default=2)
    seasonal_level: float = doc("The seasonal likelihood counts only where it reaches this level (below: 0); "
                                "above the decision threshold it asks the context for stronger evidence than "
                                "the other sources.", default=0.5)
    seasonal_smoothing: int = doc("The seasonal profile holds the median of each reading and the N - 1 before it "
                                  "(1 = the readings themselves): a sustained change, not a lone spike.",
                                  default=1)

    def __post_init__(self) -> None:
        if self.prior_std <= 0 or self.history < 2 or self.short_window < 1 or self.prior_weight < 0:
            raise ValueError("prior_std > 0, history >= 2, short_window >= 1, prior_weight >= 0")
        if len(self.range_min) != len(self.range_max) or self.onset_window < 0:
            raise ValueError("range_min and range_max need one value per feature; onset_window >= 0")
        if self.rearm_max < 0:
            raise ValueError("rearm_max >= 0")
        if self.rearm < 0 or self.deviation_window < 0 or self.deviation_window == 1 or self.deviation_warmup < 2:
            raise ValueError("rearm >= 0, deviation_window 0 (off) or >= 2, deviation_warmup >= 2")
        if not 0 < self.rearm_level <= 1:
            raise ValueError("rearm_level must be in (0, 1]")
        if self.seasonal_period < 0 or (self.seasonal_period and not (
                1 <= self.seasonal_slots <= self.seasonal_period and self.seasonal_min >= 1
                and self.seasonal_depth >= 2 and self.seasonal_smoothing >= 1 and 0 < self.seasonal_level <= 1)):
            raise ValueError("seasonal_period >= 0; when on: 1 <= seasonal_slots <= seasonal_period, "
                             "seasonal_min >= 1, seasonal_depth >= 2, seasonal_smoothing >= 1, 0 < seasonal_level <= 1")

    def to_dict(self) -> dict[str, Any]:
        """Keys added after bundle format 2 shipped are written only when used: a bundle that does not use
        them still loads on agents that predate them (an agent refuses keys it does not know)."""
        data: dict[str, Any] = dump(self)
        if not self.rearm_max:
            del data["rearm_max"]
        if not self.seasonal_period:
            for key in SEASONAL_KEYS:
                del data[key]
        return data

    @classmethod
    def from_dict(cls, data: Any) -> LikelihoodParams:
        return load(cls, data)


SEASONAL_KEYS = ("seasonal_period", "seasonal_slots", "seasonal_depth", "seasonal_min", "seasonal_level",
                 "seasonal_smoothing")


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
    """One stream's state. ``update`` takes raw scores in time order and returns ℓ for each.

    Vectorised over a batch, yet bit-identical to feeding the scores one at a time: running sums are
    sequential ``cumsum``s of exactly the additions a scalar loop would do (re-summed with ``fsum``
    once per history turnover, so they do not drift), transcendental functions go through ``math``.
    """

    def __init__(self, params: LikelihoodParams) -> None:
        self.params = params
        self._recent = np.zeros(0)  # the last short_window log-scores
        self._history: deque[float] = deque()
        self._sum = 0.0
        self._sq = 0.0
        self._lo = np.asarray(params.range_min, np.float64)
        self._hi = np.asarray(params.range_max, np.float64)
        self._evicted = 0
        self._onset_tail = np.zeros(0)  # the last onset_window likelihoods (before onset filtering)
        self._rearm = _Rearm(params)
        self._deviation: _Deviation | None = (
            _Deviation(params.deviation_window, params.deviation_warmup, params.history)
            if params.deviation_window else None)
        self._seasonal: _Seasonal | None = _Seasonal(params) if params.seasonal_period else None
        self._seasonal_rearm = _Rearm(params)  # the seasonal context re-arms on its own

    def continued(self, params: LikelihoodParams) -> AnomalyLikelihood:
        """The likelihood of a new model (same features) on this stream: the score history starts over
        from the new model's prior (its scores are on another scale), but what belongs to the stream
        carries over — the range of readings seen so far (range novelty) and the recent likelihoods
        (onsets) — so a model swap neither re-alarms on values already seen nor on an excursion
        already reported."""
        nxt = AnomalyLikelihood(params)
        if len(self._lo) and len(nxt._lo) == len(self._lo):
            nxt._lo, nxt._hi = np.minimum(nxt._lo, self._lo), np.maximum(nxt._hi, self._hi)
        elif len(self._lo) and not len(nxt._lo):
            nxt._lo, nxt._hi = self._lo.copy(), self._hi.copy()
        if params.onset_window:
            nxt._onset_tail = self._onset_tail[-params.onset_window :].copy()
        nxt._rearm = self._rearm.continued(params)
        if self._deviation is not None and nxt._deviation is not None and \
                self._deviation.window == nxt._deviation.window:
            nxt._deviation = self._deviation  # the readings' own statistics: not the model's
        if self._seasonal is not None and nxt._seasonal is not None and self._seasonal.same_profile(params):
            nxt._seasonal = self._seasonal
            nxt._seasonal_rearm = self._seasonal_rearm.continued(params)
        return nxt

    def update_one(self, score: float, reading: np.ndarray | None = None, timestamp: float | None = None) -> float:
        """ℓ for one window's raw score; ``reading`` is its newest raw reading (for range novelty), ``timestamp``
        its time in epoch seconds (for the seasonal context)."""
        readings = None if reading is None else np.asarray(reading, np.float64)[None, :]
        ts = None if timestamp is None else np.array([timestamp], np.float64)
        return float(self.update(np.array([score], dtype=np.float64), readings, ts)[0])

    def update(self, scores: np.ndarray, readings: np.ndarray | None = None,
               timestamps: np.ndarray | None = None) -> np.ndarray:
        """ℓ for each score in order; ``readings`` (newest raw reading per window) feed range novelty and the
        model-free opinions, ``timestamps`` (epoch seconds per window) the seasonal context."""
        scores = np.asarray(scores, np.float64).reshape(-1)
        if not len(scores):
            return np.zeros(0)
        lik = self._likelihoods(scores) if len(scores) > 1 else np.array([self._likelihood_one(float(scores[0]))])
        rows = None if readings is None else np.asarray(readings, np.float64).reshape(len(scores), -1)
        if self._deviation is not None and rows is not None:
            lik = np.maximum(lik, self._deviation.update(rows))
        out = self._rearm.apply(self._onsets(lik))
        if self._seasonal is not None and rows is not None and timestamps is not None:
            seasonal = self._seasonal.update(rows, np.asarray(timestamps, np.float64).reshape(-1))
            seasonal = np.where(seasonal >= self.params.seasonal_level, seasonal, 0.0)
            out = np.maximum(out, self._seasonal_rearm.apply(seasonal))
        if rows is not None and self.params.spatial_tolerance >= 0:
            novel = self._novel(rows)
            out = np.where(novel, 1.0, out)  # novelty is reported every time; it does not mask later onsets
        return out

    def _likelihood_one(self, score: float) -> float:
        """``_likelihoods`` for one score in Python floats: the same operations in the same order, so the
        same bits (tests/test_likelihood.py), at a fraction of the cost of ~30 numpy calls on 1-element
        arrays (single readings arriving one at a time: the latency path)."""
        p = self.params
        k, h, w = p.short_window, p.history, p.prior_weight
        v = math.log1p(max(score, 0.0)) if math.isfinite(score) else 50.0
        recent = self._recent.tolist()
        vals = [*([0.0] * max(0, k - 1 - len(recent))), *recent, v][-k:]
        acc = vals[0]
        for x in vals[1:]:
            acc = acc + x
        avg = acc / min(len(recent) + 1, k)
        self._recent = np.array([*recent, v][-k:])
        # _learn for one step: the sums before it, then add avg (and evict the oldest past `history`).
        hist_len = len(self._history)
        sum_before, sq_before = self._sum, self._sq
        old = self._history[0] if hist_len + 1 > h else 0.0
        s, q = sum_before + avg + -old, sq_before + avg * avg + -(old * old)
        if hist_len + 1 > h:
            self._evicted += 1
        self._history.append(avg)
        while len(self._history) > h:
            self._history.popleft()
        if hist_len + 1 > h and self._evicted % h == 0:  # once per turnover: exact re-sum, no drift
            kept = list(self._history)
            s, q = math.fsum(kept), math.fsum(x * x for x in kept)
        self._sum, self._sq = s, q
        total = hist_len + w
        if total == 0:
            mean, std = p.prior_mean, p.prior_std
        else:
            mean = (sum_before + w * p.prior_mean) / total
            second = (sq_before + w * (p.prior_std**2 + p.prior_mean**2)) / total
            std = math.sqrt(max(second - mean * mean, 1e-12))
        z = (avg - mean) / max(std, p.prior_std * 0.1)
        lik = 1.0 - 0.5 * math.erfc(z / math.sqrt(2))
        scaled = math.log(1.0000000001 - lik) / _LOG_FLOOR
        return 1.0 if not scaled < 1.0 else scaled  # np.fmin(1.0, x): 1.0 for NaN too

    def _likelihoods(self, scores: np.ndarray) -> np.ndarray:
        p = self.params
        n, k = len(scores), p.short_window
        finite = np.isfinite(scores)
        # math.log1p element by element (bit-identical to the scalar path), without a Python-level loop body.
        logs = np.fromiter(map(math.log1p, np.where(finite, np.maximum(scores, 0.0), 0.0).tolist()), np.float64, n)
        logs[~finite] = 50.0
        # Moving average of the last k log-scores, summed oldest first as sum() over a deque would.
        pad = max(0, k - 1 - len(self._recent))
        ext = np.concatenate([np.zeros(pad), self._recent, logs])  # 0.0 + x == x: padding is exact
        win = np.lib.stride_tricks.sliding_window_view(ext, k)[-n:]
        acc = win[:, 0].copy()
        for j in range(1, k):
            acc = acc + win[:, j]
        avg = acc / np.minimum(len(self._recent) + np.arange(1, n + 1), k)
        self._recent = np.concatenate([self._recent, logs])[-k:]
        sum_before, sq_before, hist_len = self._learn(avg)
        w = p.prior_weight
        total = hist_len + w
        safe = np.where(total == 0, 1, total)
        mean = np.where(total == 0, p.prior_mean, (sum_before + w * p.prior_mean) / safe)
        second = (sq_before + w * (p.prior_std**2 + p.prior_mean**2)) / safe
        std = np.where(total == 0, p.prior_std, np.sqrt(np.maximum(second - mean * mean, 1e-12)))
        z = (avg - mean) / np.maximum(std, p.prior_std * 0.1)
        scaled = z / math.sqrt(2)
        # log_scale(1 - erfc(v) / 2) per window, with the same math.* calls and float operations.
        lik = 1.0 - 0.5 * np.fromiter(map(math.erfc, scaled.tolist()), np.float64, n)
        return np.fmin(1.0, np.fromiter(map(math.log, (1.0000000001 - lik).tolist()), np.float64, n) / _LOG_FLOOR)

    def _learn(self, avg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Add ``avg`` to the running history (learn after judging); sums and length before each step."""
        h = self.params.history
        n = len(avg)
        start_len = len(self._history)
        # Only the oldest n history values can be evicted by n steps: convert those, not the whole history
        # (a per-reading O(history) copy was most of the single-reading cost).
        head = np.fromiter(itertools.islice(self._history, min(n, start_len)), np.float64)
        combined = np.concatenate([head, avg])  # == (history + avg)[: len(head) + n] where indexed below
        after_len = start_len + np.arange(1, n + 1)  # history length after appending avg_i
        evict = after_len > h
        first_kept = np.maximum(after_len - h, 0)  # index in combined of the oldest value kept after step i
        old = np.where(evict, combined[np.maximum(first_kept - 1, 0)], 0.0)
        evictions = self._evicted + np.cumsum(evict)
        resum = evict & (evictions % h == 0)
        sum_before, sq_before = np.empty(n), np.empty(n)
        s, q = self._sum, self._sq
        seg = 0
        for end in [*np.flatnonzero(resum).tolist(), n - 1]:
            if end < seg:
                continue
            a = avg[seg : end + 1]
            o = old[seg : end + 1]
            # s + a_i - o_i for each step, as one sequential accumulation (x - y == x + (-y) exactly).
            steps = np.empty(2 * len(a) + 1)
            steps[0], steps[1::2], steps[2::2] = s, a, -o
            cum = np.add.accumulate(steps)
            sum_before[seg : end + 1] = cum[0:-1:2]
            steps[0], steps[1::2], steps[2::2] = q, a * a, -(o * o)
            cumq = np.add.accumulate(steps)
            sq_before[seg : end + 1] = cumq[0:-1:2]
            s, q = float(cum[-1]), float(cumq[-1])
            if resum[end]:  # once per turnover: exact re-sum, no drift
                whole = np.concatenate([np.fromiter(self._history, np.float64, start_len), avg])
                kept = whole[first_kept[end] : start_len + end + 1].tolist()
                s, q = math.fsum(kept), math.fsum(v * v for v in kept)
            seg = end + 1
        self._sum, self._sq = s, q
        self._evicted = int(evictions[-1])
        self._history.extend(avg.tolist())
        while len(self._history) > h:
            self._history.popleft()
        return sum_before, sq_before, np.minimum(after_len - 1, h)

    def _onsets(self, lik: np.ndarray) -> np.ndarray:
        """Keep ℓ only where it exceeds every one of the previous onset_window values."""
        k = self.params.onset_window
        if k == 0:
            return lik
        pad = np.full(max(0, k - len(self._onset_tail)), -1.0)
        ext = np.concatenate([pad, self._onset_tail, lik])
        previous = np.lib.stride_tricks.sliding_window_view(ext[:-1], k)[-len(lik) :].max(axis=1)
        self._onset_tail = ext[-k:].copy()
        return np.where(lik > previous, lik, 0.0)

    def _novel(self, readings: np.ndarray) -> np.ndarray:
        """Per reading: beyond the range seen before it by more than the tolerance (then widen the range)."""
        out = np.zeros(len(readings), dtype=bool)
        if len(self._lo) != readings.shape[1]:  # no training range: the first reading starts it
            self._lo, self._hi = readings[0].copy(), readings[0].copy()
            if len(readings) == 1:
                return out
            out[1:] = self._novel(readings[1:])
            return out
        ok = np.isfinite(readings)
        hi_run = np.maximum.accumulate(np.vstack([self._hi, np.where(ok, readings, -np.inf)]), axis=0)
        lo_run = np.minimum.accumulate(np.vstack([self._lo, np.where(ok, readings, np.inf)]), axis=0)
        hi, lo = hi_run[:-1], lo_run[:-1]  # the range before each reading
        margin = self.params.spatial_tolerance * (hi - lo)
        out[:] = np.any(ok & ((readings > hi + margin) | (readings < lo - margin)), axis=1)
        self._hi, self._lo = hi_run[-1].copy(), lo_run[-1].copy()
        return out


def robust_deviation(x: np.ndarray, median: np.ndarray, mad: np.ndarray) -> np.ndarray:
    """|x − median| in median absolute deviations; the 1e-3·|median| floor keeps a flat stretch (MAD 0)
    from dividing by zero or turning noise into alarms.  The deviation and seasonal opinions share it."""
    return np.abs(x - median) / (mad + 1e-3 * np.abs(median) + 1e-9)


class _Deviation:
    """The deviation likelihood's stream state: the last ``window`` readings, the warm-up scores, then a
    likelihood primed on them.  Per reading the score is max over features of
    |x − median| / (MAD + 1e-3·|median| + 1e-9) over the previous ``window`` readings (NaN-aware; 0 until
    a window of history exists), so a flat stretch does not divide by zero.  Bit-identical however the
    readings are batched: every score depends only on its own window."""

    def __init__(self, window: int, warmup: int, history: int) -> None:
        self.window = window
        self._recent = np.zeros((0, 0))
        self._primed = _Primed(warmup, history)

    def scores(self, rows: np.ndarray) -> np.ndarray:
        """Deviation score of each row against the ``window`` readings before it (NaN without history)."""
        if self._recent.shape[1] != rows.shape[1]:
            self._recent = np.zeros((0, rows.shape[1]))
        ext = np.vstack([self._recent, rows])
        self._recent = ext[-self.window :].copy()
        out = np.full(len(rows), np.nan)
        first = max(0, self.window - (len(ext) - len(rows)))  # rows with a full window of history
        if first >= len(rows):
            return out
        win = np.lib.stride_tricks.sliding_window_view(ext[:-1], self.window, axis=0)[len(ext) - len(rows) - self.window + first :]
        # win: (m, f, window) for rows[first:]
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows: NaN score
            med = np.nanmedian(win, axis=2)
            mad = np.nanmedian(np.abs(win - med[:, :, None]), axis=2)
            dev = robust_deviation(rows[first:], med, mad)
            out[first:] = np.nanmax(np.where(np.isfinite(dev), dev, -np.inf), axis=1)
        out[~np.isfinite(out)] = np.nan
        return out

    def update(self, rows: np.ndarray) -> np.ndarray:
        """ℓ of each row's deviation (0 while warming up or without history)."""
        return self._primed.update(self.scores(rows))


class _Rearm:
    """Re-arming: ℓ is kept only where none of the previous ``rearm`` readings reached ``rearm_level`` —
    one alarm per excursion — or, with ``rearm_max``, where the last reported alarm is ``rearm_max``
    readings back (so a stream that never stays quiet is not silenced for good)."""

    def __init__(self, params: LikelihoodParams) -> None:
        self.k, self.level, self.cap = params.rearm, params.rearm_level, params.rearm_max
        self._tail = np.zeros(0, dtype=bool)  # the last k readings: did ℓ reach the level?
        self._since = 0  # readings since the last reported alarm (counted from the stream's start)

    def continued(self, params: LikelihoodParams) -> _Rearm:
        nxt = _Rearm(params)
        nxt._tail = self._tail[-params.rearm :].copy() if params.rearm else nxt._tail
        nxt._since = self._since
        return nxt

    def apply(self, lik: np.ndarray) -> np.ndarray:
        k = self.k
        if k == 0:
            return lik
        crossed = lik >= self.level
        ext = np.concatenate([np.zeros(max(0, k - len(self._tail)), bool), self._tail, crossed])
        counts = np.concatenate([[0], np.cumsum(ext, dtype=np.int64)])
        # crossings among the k values before each new one: ext[i .. i+k-1] for new value ext[i+k]
        starts = np.arange(len(lik))
        keep = (counts[starts + k] - counts[starts]) == 0
        self._tail = ext[-k:].copy()
        last = -self._since - 1  # index (in this batch) of the last reported alarm
        for i in np.flatnonzero(crossed).tolist():  # sparse: only readings reaching the level
            if not keep[i] and self.cap and i - last >= self.cap:
                keep[i] = True
            if keep[i]:
                last = i
        self._since = len(lik) - 1 - last
        return np.where(keep, lik, 0.0)


class _Primed:
    """A likelihood for a model-free score learned on the stream itself: the first ``warmup`` finite scores
    prime it (learned, not reported), then each finite score gets ℓ (NaN scores: 0, not learned)."""

    def __init__(self, warmup: int, history: int, short_window: int = 1) -> None:
        self.warmup, self.history, self.short_window = warmup, history, short_window
        self._warm: list[float] = []
        self._lik: AnomalyLikelihood | None = None

    def update(self, scores: np.ndarray) -> np.ndarray:
        out = np.zeros(len(scores))
        ok = np.flatnonzero(np.isfinite(scores))
        i = 0
        while i < len(ok) and self._lik is None:  # warm-up: collect, then prime on what was collected
            self._warm.append(float(scores[ok[i]]))
            i += 1
            if len(self._warm) >= self.warmup:
                self._lik = AnomalyLikelihood(fit_prior(np.array(self._warm), short_window=self.short_window,
                                                        history=self.history))
                self._lik.update(np.array(self._warm))  # learned, not reported
        if self._lik is not None and i < len(ok):
            out[ok[i:]] = self._lik.update(scores[ok[i:]])
        return out


class _Seasonal:
    """The seasonal context's stream state: per time slot (``(t mod period) // (period / slots)``) the newest
    ``depth`` readings; a reading's score is max over features of |x − median| / (MAD + 1e-3·|median| + 1e-9)
    over its slot's earlier readings, NaN until the slot was seen in ``min`` earlier periods.  Each reading is judged
    before it joins its slot, one at a time, so batching changes nothing.  Memory: slots × depth × features."""

    def __init__(self, params: LikelihoodParams) -> None:
        self.period, self.slots = params.seasonal_period, params.seasonal_slots
        self.depth, self.min = params.seasonal_depth, params.seasonal_min
        self._smoothing = params.seasonal_smoothing
        self._profile = np.zeros((self.slots, self.depth, 0))  # ring per slot, allocated at the first reading
        self._count = np.zeros(self.slots, np.int64)  # readings ever added per slot
        self._finite = np.ones(self.slots, bool)  # the slot holds no NaN
        self._last_period = np.full(self.slots, -1, np.int64)  # the period the slot was last seen in
        self._periods = np.zeros(self.slots, np.int64)  # distinct earlier periods the slot was seen in
        self._primed = _Primed(params.deviation_warmup, params.history)
        self._tail = np.zeros((0, 0))  # the last smoothing - 1 readings

    def same_profile(self, params: LikelihoodParams) -> bool:
        return (self.period, self.slots, self.depth, self.min, self._smoothing) == (
            params.seasonal_period, params.seasonal_slots, params.seasonal_depth, params.seasonal_min,
            params.seasonal_smoothing)

    def slot(self, t: float) -> int:
        return int((t % self.period) * self.slots // self.period) % self.slots

    def kept(self, slot: int) -> np.ndarray:
        """The readings slot ``slot`` holds, oldest first."""
        k = int(self._count[slot])
        if k <= self.depth:
            return self._profile[slot, :k]
        return np.roll(self._profile[slot], -(k % self.depth), axis=0)

    def scores(self, rows: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
        out = np.full(len(rows), np.nan)
        if self._profile.shape[2] != rows.shape[1]:
            self._profile = np.zeros((self.slots, self.depth, rows.shape[1]))
            self._tail = np.zeros((0, rows.shape[1]))
            self._count[:] = 0
            self._finite[:] = True
            self._last_period[:] = -1
            self._periods[:] = 0
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slots: NaN score
            if self._smoothing > 1:  # each row becomes the median of itself and the smoothing - 1 rows before it
                ext = np.vstack([self._tail, rows])  # the tail holds at most smoothing - 1 rows
                self._tail = ext[-(self._smoothing - 1) :].copy()
                pad = np.full((self._smoothing - 1 - (len(ext) - len(rows)), rows.shape[1]), np.nan)
                win = np.lib.stride_tricks.sliding_window_view(np.vstack([pad, ext]), self._smoothing, axis=0)
                rows = np.nanmedian(win[-len(rows) :], axis=2)
            for i, t in enumerate(timestamps.tolist()):
                if not math.isfinite(t):
                    continue
                slot, period = self.slot(t), int(t // self.period)
                if period != self._last_period[slot]:  # a new visit: the previous ones are earlier periods
                    self._periods[slot] += self._last_period[slot] >= 0
                    self._last_period[slot] = period
                k = int(self._count[slot])
                if self._periods[slot] >= self.min and k >= 2:
                    block = self._profile[slot, : min(k, self.depth)]  # order does not matter for a median
                    median = np.median if self._finite[slot] else np.nanmedian  # np.median: ~20x faster
                    med = median(block, axis=0)
                    mad = median(np.abs(block - med), axis=0)
                    dev = robust_deviation(rows[i], med, mad)
                    dev = dev[np.isfinite(dev)]
                    if len(dev):
                        out[i] = float(dev.max())
                self._profile[slot, k % self.depth] = rows[i]
                self._count[slot] = k + 1
                self._finite[slot] = bool(np.isfinite(self._profile[slot, : min(k + 1, self.depth)]).all())
        return out

    def update(self, rows: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
        """ℓ of each row's seasonal deviation (0 while the slot or the likelihood is warming up)."""
        return self._primed.update(self.scores(rows, timestamps))
