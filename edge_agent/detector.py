"""Streaming scoring, columnar: ring buffer (numpy) → strided windows → shared preprocessing → TFLite.

Readings arrive as :class:`~shared.readings.ReadingsBlock` (a numpy block, whatever the wire form),
pass the timestamp rule, land in a preallocated ring buffer, and every reading that completes a
window is scored in batches of ``max_batch`` windows (one interpreter call each).  The numbers are
identical whether readings come one at a time or in blocks (tests/test_fastpath.py).  A model swap
replaces the :class:`ActiveModel` reference between batches; the buffer carries over.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np

from shared.bundle import Bundle
from shared.decision import Decision, DecisionMode, DecisionParams
from shared.inference import Runtime, TFLiteModel
from shared.likelihood import AnomalyLikelihood, LikelihoodParams
from shared.preprocessing import PreprocessParams, series_windows
from shared.protocol import RejectReason
from shared.readings import ReadingsBlock
from shared.scoring import ScoringParams, score_outputs
from shared.stuck import StuckParams, stuck_in_series, stuck_onsets

BUFFER_READINGS = 4096  # readings kept (the longest window any model may use, and recent_readings)
MAX_BUFFER_FEATURES = 256
_BUCKETS = (1, 4, 16, 64, 256)


@dataclass
class ActiveModel:
    """A verified bundle loaded into an interpreter."""

    version: int
    name: str
    preprocessing: PreprocessParams
    scoring: ScoringParams
    decision_params: DecisionParams
    model: TFLiteModel
    likelihood: LikelihoodParams | None = None
    stuck: StuckParams | None = None  # per-channel stuck-sensor check (shared/stuck.py)

    @property
    def decision(self) -> Decision:
        return Decision.from_params(self.decision_params)

    @classmethod
    def from_bundle(cls, bundle: Bundle, runtime: Runtime = Runtime.AUTO, num_threads: int = 1) -> ActiveModel:
        m = bundle.manifest
        model = TFLiteModel(bundle.model_bytes, heads=m.scoring.head_list, runtime=runtime, num_threads=num_threads)
        p = m.preprocessing
        if (model.window, model.n_features) != (p.window, p.n_features):
            raise ValueError(
                f"model input ({model.window}, {model.n_features}) does not match manifest ({p.window}, {p.n_features})"
            )
        if p.window > BUFFER_READINGS // 2:
            raise ValueError(f"window {p.window} exceeds the agent's limit of {BUFFER_READINGS // 2} readings")
        return cls(version=m.version, name=m.name, preprocessing=p, scoring=m.scoring,
                   decision_params=m.decision, model=model, likelihood=m.likelihood, stuck=m.stuck)

    @property
    def likelihood_threshold(self) -> float | None:
        """Set when the bundle decides on the streaming likelihood rather than the raw score."""
        d = self.decision
        return d.threshold if d.on_likelihood else None


def decide(scores: np.ndarray, likelihood: np.ndarray, decision: Decision, stuck: np.ndarray | None) -> np.ndarray:
    """The agent's anomaly flag per window: the bundle's decision (shared/decision.py) or a channel that
    became stuck (``stuck``: onsets, shared/stuck.py)."""
    flags = decision.flags(scores, likelihood)
    return flags if stuck is None else flags | stuck.any(axis=1)


@dataclass(frozen=True)
class ScoredWindow:
    ts: float  # time of the newest reading in the window
    score: float
    threshold: float
    reconstruction_error: float
    prediction_error: float
    contributions: np.ndarray  # (f,) per-channel scores (zeros for classifiers)
    model_version: int
    window: np.ndarray  # preprocessed model input (w, f)
    likelihood: float = 0.0  # streaming anomaly likelihood in [0, 1] (log-scaled), 0 without params
    likelihood_threshold: float | None = None  # set when the decision is on the likelihood
    anomalous: bool = False  # the decision (see ``decide``)
    stuck: tuple[int, ...] = ()  # channels the stuck check found frozen in this window


@dataclass(frozen=True)
class ScoredBatch:
    """Consecutive scored windows, columnar: element i is the window ending at ``ts[i]``."""

    ts: np.ndarray  # (n,)
    scores: np.ndarray  # (n,)
    threshold: float
    reconstruction_error: np.ndarray  # (n,)
    prediction_error: np.ndarray  # (n,)
    contributions: np.ndarray  # (n, f)
    likelihood: np.ndarray  # (n,)
    likelihood_threshold: float | None
    anomalous: np.ndarray  # (n,) bool
    model_version: int
    windows: np.ndarray  # (n, w, f) preprocessed model input
    stuck: np.ndarray | None = None  # (n, f) bool: channels the stuck check found frozen (None: no check)

    def __len__(self) -> int:
        return len(self.ts)

    def window(self, i: int) -> ScoredWindow:
        """One window as an object: only for the few that become events."""
        return ScoredWindow(
            ts=float(self.ts[i]), score=float(self.scores[i]), threshold=self.threshold,
            reconstruction_error=float(self.reconstruction_error[i]),
            prediction_error=float(self.prediction_error[i]), contributions=self.contributions[i],
            model_version=self.model_version, window=self.windows[i], likelihood=float(self.likelihood[i]),
            likelihood_threshold=self.likelihood_threshold, anomalous=bool(self.anomalous[i]),
            stuck=() if self.stuck is None else tuple(np.flatnonzero(self.stuck[i]).tolist()),
        )

    @staticmethod
    def concat(parts: list[ScoredBatch]) -> ScoredBatch:
        if len(parts) == 1:
            return parts[0]
        first = parts[0]

        def cat(name: str) -> np.ndarray:
            return np.concatenate([getattr(p, name) for p in parts])

        stuck = None if any(p.stuck is None for p in parts) else cat("stuck")
        return ScoredBatch(cat("ts"), cat("scores"), first.threshold, cat("reconstruction_error"),
                           cat("prediction_error"), cat("contributions"), cat("likelihood"),
                           first.likelihood_threshold, cat("anomalous"), first.model_version, cat("windows"),
                           stuck)


@dataclass(frozen=True)
class PushResult:
    """What one push did: readings admitted, rejected by reason, and the windows scored.

    ``rows`` holds the buffer's rows (every column seen so far) from the first reading of the first
    scored window to the newest; its last ``admitted`` rows are the new ones, and ``scored[i]`` is
    the window ending at row ``len(rows) - len(scored) + i``.
    """

    admitted: int
    rejected: dict[RejectReason, int]
    rows: ReadingsBlock
    scored: ScoredBatch | None
    window: int  # the scoring model's window length (0 without a model)


class StreamingDetector:
    """Keeps the recent raw readings and scores every new one once a model is active.

    ``max_future_s``: readings stamped further than this ahead of the agent's clock are rejected
    (None = no limit, for offline replay).  Readings not after the previous one are always rejected.
    """

    def __init__(self, threshold_scale: float = 1.0, max_batch: int = 64, max_future_s: float | None = None) -> None:
        self.model: ActiveModel | None = None
        self._likelihood: AnomalyLikelihood | None = None
        self._stuck_last: np.ndarray | None = None  # stuck channels of the last scored window (onsets)
        self.threshold_scale = threshold_scale
        self.max_batch = max_batch
        self.max_future_s = max_future_s
        self._lock = threading.Lock()  # the buffer: the scorer writes, recent_* read from other threads
        self._ts = np.zeros(2 * BUFFER_READINGS)
        self._vals = np.full((2 * BUFFER_READINGS, 0), np.nan)
        self._features: list[str] = []
        self._col: dict[str, int] = {}
        self._end = 0  # rows live at [_end - _n, _end)
        self._n = 0
        self.last_ts = -np.inf
        self.rejected: Counter[RejectReason] = Counter()

    @property
    def features(self) -> tuple[str, ...]:
        """Buffer columns: every feature seen so far (and the active model's)."""
        return tuple(self._features)

    def swap(self, model: ActiveModel | None) -> ActiveModel | None:
        previous, self.model = self.model, model
        if model is not None:
            with self._lock:
                self._columns(model.preprocessing.features)
        # A new model has a new score distribution: its likelihood starts from the bundle's prior; on the same
        # features the stream's own state (range seen, recent alarms) carries over (retraining, updates).
        same_features = previous is not None and model is not None and \
            previous.preprocessing.features == model.preprocessing.features
        if not same_features:
            self._stuck_last = None
        if model is None or model.likelihood is None:
            self._likelihood = None
        elif self._likelihood is not None and same_features:
            self._likelihood = self._likelihood.continued(model.likelihood)
        else:
            self._likelihood = AnomalyLikelihood(model.likelihood)
        return previous

    # ------------------------------------------------------------------ buffer

    def _columns(self, names: list[str] | tuple[str, ...]) -> np.ndarray:
        """Buffer column of each name, adding columns (NaN history) for new names. Caller holds the lock."""
        new = [f for f in dict.fromkeys(names) if f not in self._col]
        if new:
            if len(self._features) + len(new) > MAX_BUFFER_FEATURES:
                self._compact_columns()
                if len(self._features) + len(new) > MAX_BUFFER_FEATURES:
                    raise ValueError(f"more than {MAX_BUFFER_FEATURES} distinct features")
            for f in new:
                self._col[f] = len(self._features)
                self._features.append(f)
            grown = np.full((len(self._ts), len(self._features)), np.nan)
            grown[:, : self._vals.shape[1]] = self._vals
            self._vals = grown
        return np.fromiter((self._col[f] for f in names), dtype=np.intp, count=len(names))

    def _compact_columns(self) -> None:
        """Forget columns that hold no value in the buffer and that the model does not use."""
        live = self._vals[self._end - self._n : self._end]
        keep_names = set(self.model.preprocessing.features) if self.model else set()
        keep = [j for j, f in enumerate(self._features) if f in keep_names or not np.isnan(live[:, j]).all()]
        self._features = [self._features[j] for j in keep]
        self._col = {f: j for j, f in enumerate(self._features)}
        self._vals = np.ascontiguousarray(self._vals[:, keep])

    def _admit(self, ts: np.ndarray) -> np.ndarray:
        """The timestamp rule: each reading must be after the previous one and not too far ahead."""
        ok = np.isfinite(ts)
        if self.max_future_s is not None:
            future = ok & (ts > time.time() + self.max_future_s)
            if future.any():
                self.rejected[RejectReason.FUTURE_TIMESTAMP] += int(future.sum())
                ok &= ~future
        prev = np.maximum.accumulate(np.where(ok, ts, -np.inf))
        prev = np.concatenate([[self.last_ts], np.maximum(prev[:-1], self.last_ts)])
        stale = ok & (ts <= prev)
        if stale.any():
            self.rejected[RejectReason.STALE_TIMESTAMP] += int(stale.sum())
        return np.asarray(ok & ~stale)

    def _append(self, block: ReadingsBlock) -> int:
        """Admit and store a block (at most BUFFER_READINGS // 2 rows). Caller holds the lock."""
        keep = self._admit(block.ts)
        ts, values = (block.ts, block.values) if keep.all() else (block.ts[keep], block.values[keep])
        k = len(ts)
        if k == 0:
            return 0
        cols = self._columns(block.features)
        cap = len(self._ts)
        if self._end + k > cap:  # slide the live rows to the front: windows stay contiguous
            live = min(self._n, BUFFER_READINGS - k)
            self._ts[:live] = self._ts[self._end - live : self._end]
            self._vals[:live] = self._vals[self._end - live : self._end]
            self._end = self._n = live
        rows = slice(self._end, self._end + k)
        self._ts[rows] = ts
        if len(cols) == self._vals.shape[1] and (cols == np.arange(len(cols))).all():
            self._vals[rows] = values
        else:
            self._vals[rows] = np.nan
            self._vals[rows, cols] = values
        self._end += k
        self._n = min(self._n + k, BUFFER_READINGS)
        self.last_ts = float(ts[-1])
        return k

    # ------------------------------------------------------------------ scoring

    def push_block(self, block: ReadingsBlock) -> PushResult:
        """Admit ``block`` (at most BUFFER_READINGS // 2 readings); score every reading that completes a window."""
        if len(block) > BUFFER_READINGS // 2:
            raise ValueError(f"push at most {BUFFER_READINGS // 2} readings at a time")
        model, likelihood = self.model, self._likelihood  # a concurrent swap applies to the next block
        before = Counter(self.rejected)
        result = self._push(block, model, likelihood)
        rejected = {r: n - before.get(r, 0) for r, n in self.rejected.items() if n > before.get(r, 0)}
        return PushResult(result.admitted, rejected, result.rows, result.scored, result.window)

    def _push(self, block: ReadingsBlock, model: ActiveModel | None,
              likelihood: AnomalyLikelihood | None) -> PushResult:
        with self._lock:
            k = self._append(block)
            w = model.preprocessing.window if model else 0
            n_windows = min(k, self._n - w + 1) if model else 0
            first = self._end - max(k, n_windows + w - 1) if k else self._end
            rows = ReadingsBlock(self._ts[first : self._end].copy(), tuple(self._features),
                                 self._vals[first : self._end].copy())
            raw = None
            if model is not None and n_windows > 0:
                cols = self._columns(model.preprocessing.features)
                raw = self._vals[self._end - n_windows - w + 1 : self._end][:, cols]
        if raw is None or model is None:
            return PushResult(k, {}, rows, None, w)
        scored = self._score(model, raw, rows.ts[len(rows) - n_windows :], likelihood, stream=True)
        return PushResult(k, {}, rows, scored, w)

    def _score(self, model: ActiveModel, raw: np.ndarray, ts: np.ndarray,
               likelihood: AnomalyLikelihood | None, stream: bool = False) -> ScoredBatch:
        """Score every window of ``raw`` (rows in the model's feature order); ``ts`` per window end.
        ``stream``: these windows continue the live stream (stuck onsets carry over between batches)."""
        p = model.preprocessing
        w = p.window
        x = series_windows(raw, p)
        outputs = model.model.predict_batched(x, self.max_batch, _BUCKETS)
        stuck = stuck_in_series(raw, w, model.stuck) if model.stuck is not None else None
        n = len(x)
        scored = score_outputs(x, outputs, model.scoring)
        decision = model.decision.scaled(self.threshold_scale)
        # Events report the score threshold at this agent's scale (a likelihood decision is on another axis).
        threshold = Decision(DecisionMode.SCORE, model.decision_params.score_threshold, self.threshold_scale).in_force
        lik = likelihood.update(scored.scores, raw[w - 1 :], np.asarray(ts, np.float64)) if likelihood else np.zeros(n)
        lik_threshold = decision.in_force if decision.on_likelihood else None
        contributions = scored.contributions
        onsets = None
        if stuck is not None:
            onsets = stuck_onsets(stuck, self._stuck_last if stream else None)
            if stream and len(stuck):
                self._stuck_last = stuck[-1].copy()
        if stuck is not None:  # a stuck window's attribution is its stuck channel(s)
            contributions = np.where(stuck.any(axis=1, keepdims=True), stuck.astype(np.float64), contributions)
        return ScoredBatch(
            ts=np.asarray(ts, dtype=np.float64), scores=scored.scores, threshold=threshold,
            reconstruction_error=scored.errors.reconstruction, prediction_error=scored.errors.prediction,
            contributions=contributions, likelihood=lik, likelihood_threshold=lik_threshold,
            anomalous=decide(scored.scores, lik, decision, onsets), model_version=model.version, windows=x,
            stuck=stuck,
        )

    def push(self, readings: list[tuple[float, dict[str, float | None]]]) -> list[ScoredWindow]:
        """Per-reading convenience (tests, simple callers): one scored window per completed window."""
        if not readings:
            return []
        scored = self.push_block(ReadingsBlock.from_rows(readings)).scored
        return [scored.window(i) for i in range(len(scored))] if scored is not None else []

    # ------------------------------------------------------------------ for health checks

    def recent_readings(self, n: int) -> ReadingsBlock:
        """The last ``n`` admitted readings (fewer if the buffer holds fewer), every column."""
        with self._lock:
            k = min(n, self._n)
            return ReadingsBlock(self._ts[self._end - k : self._end].copy(), tuple(self._features),
                                 self._vals[self._end - k : self._end].copy())

    def recent_windows(self, model: ActiveModel, n: int) -> np.ndarray:
        """The last ``n`` windows preprocessed for ``model`` (e.g. a staged one): (<= n, w, f) float32."""
        w = model.preprocessing.window
        block = self.recent_readings(n + w - 1)
        if len(block) < w:
            return np.empty((0, w, model.preprocessing.n_features), dtype=np.float32)
        return series_windows(_widen(block, tuple(model.preprocessing.features)).values, model.preprocessing)

    def evaluate(self, model: ActiveModel, n: int) -> ScoredBatch | None:
        """Score the last ``n`` windows with ``model`` without touching any streaming state
        (likelihood zero): how a staged model would have judged the recent past."""
        w = model.preprocessing.window
        block = self.recent_readings(n + w - 1)
        if len(block) < w:
            return None
        raw = _widen(block, tuple(model.preprocessing.features)).values
        return self._score(model, raw, block.ts[w - 1 :], None)


def _widen(block: ReadingsBlock, features: tuple[str, ...]) -> ReadingsBlock:
    """The block's values in ``features`` order (NaN for features it lacks)."""
    if block.features == features:
        return block
    index = {f: j for j, f in enumerate(block.features)}
    values = np.full((len(block), len(features)), np.nan)
    for j, f in enumerate(features):
        if f in index:
            values[:, j] = block.values[:, index[f]]
    return ReadingsBlock(block.ts, features, values)


class EpisodeTracker:
    """Turns per-window verdicts into events: one event when a window first crosses the threshold;
    the next only after more than ``rearm`` consecutive normal windows."""

    def __init__(self, rearm: int) -> None:
        self.rearm = rearm
        self.in_episode = False
        self._below = 0

    def _normal(self, n: int) -> None:
        if self.in_episode and n > 0:
            self._below += n
            if self._below > self.rearm:
                self.in_episode = False

    def starts(self, anomalous: np.ndarray) -> list[int]:
        """Feed consecutive verdicts; the indices that start a new episode (raise an event there).
        Python work is per anomalous window only."""
        out: list[int] = []
        prev = -1
        for i in np.flatnonzero(anomalous).tolist():
            self._normal(i - prev - 1)
            self._below = 0
            if not self.in_episode:
                self.in_episode = True
                out.append(i)
            prev = i
        self._normal(len(anomalous) - prev - 1)
        return out

    def update(self, anomalous: bool) -> bool:
        """Feed one window; True when it starts a new episode (raise an event)."""
        return bool(self.starts(np.array([anomalous])))
