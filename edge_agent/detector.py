"""Streaming scoring: ring buffer of raw readings → shared preprocessing → TFLite → score → events.

Readings are scored in batches when they queue up (one interpreter call for many windows), and one
at a time when they trickle in; the numbers are identical either way.  A model swap replaces the
:class:`ActiveModel` reference between batches, so no reading is dropped and the buffer carries over.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from shared.bundle import Bundle
from shared.decision import Decision, DecisionMode
from shared.inference import Runtime, TFLiteModel
from shared.likelihood import AnomalyLikelihood, LikelihoodParams
from shared.preprocessing import PreprocessParams, preprocess_windows, sliding_windows
from shared.scoring import ScoringParams, score_outputs
from shared.stuck import StuckParams, stuck_channels

BUFFER_READINGS = 4096
_BUCKETS = (1, 4, 16, 64, 256)


@dataclass
class ActiveModel:
    """A verified bundle loaded into an interpreter."""

    version: int
    name: str
    preprocessing: PreprocessParams
    scoring: ScoringParams
    model: TFLiteModel
    likelihood: LikelihoodParams | None = None
    stuck: StuckParams | None = None

    @property
    def decision(self) -> Decision:
        return Decision.from_manifest(self.scoring, self.likelihood)

    @classmethod
    def from_bundle(cls, bundle: Bundle, runtime: Runtime = Runtime.AUTO, num_threads: int = 1) -> ActiveModel:
        m = bundle.manifest
        model = TFLiteModel(bundle.model_bytes, heads=m.scoring.head_list, runtime=runtime, num_threads=num_threads)
        p = m.preprocessing
        if (model.window, model.n_features) != (p.window, p.n_features):
            raise ValueError(
                f"model input ({model.window}, {model.n_features}) does not match manifest ({p.window}, {p.n_features})"
            )
        return cls(version=m.version, name=m.name, preprocessing=p, scoring=m.scoring, model=model,
                   likelihood=m.likelihood, stuck=m.stuck)


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
    decision: Decision | None = None  # the bundle's decision at the agent's scale (None: score > threshold)
    stuck: np.ndarray | None = None  # (f,) bool: channels whose readings stopped varying

    @property
    def anomalous(self) -> bool:
        if self.stuck is not None and self.stuck.any():
            return True
        decision = self.decision or Decision(DecisionMode.SCORE, self.threshold)
        return decision.is_anomalous(self.score, self.likelihood)

    @property
    def attribution_weights(self) -> np.ndarray:
        """Per-channel weights for attribution: the stuck channels if any, else the score contributions."""
        if self.stuck is not None and self.stuck.any():
            return self.stuck.astype(np.float64)
        return self.contributions


class StreamingDetector:
    """Keeps the recent raw readings and scores every new one once a model is active."""

    def __init__(self, threshold_scale: float = 1.0, max_batch: int = 64) -> None:
        self._ts: deque[float] = deque(maxlen=BUFFER_READINGS)
        self._rows: deque[dict[str, float | None]] = deque(maxlen=BUFFER_READINGS)
        self.model: ActiveModel | None = None
        self._likelihood: AnomalyLikelihood | None = None
        self.threshold_scale = threshold_scale
        self.max_batch = max_batch

    def swap(self, model: ActiveModel | None) -> ActiveModel | None:
        previous, self.model = self.model, model
        # A new model has a new score distribution: its likelihood starts from the bundle's prior.
        self._likelihood = AnomalyLikelihood(model.likelihood) if model and model.likelihood else None
        return previous

    def push(self, readings: list[tuple[float, dict[str, float | None]]]) -> list[ScoredWindow]:
        """Append readings; return one scored window per reading that completes a window."""
        model, likelihood = self.model, self._likelihood  # a concurrent swap applies to the next batch
        if len(readings) > BUFFER_READINGS // 2:
            raise ValueError(f"push at most {BUFFER_READINGS // 2} readings at a time")
        for ts, values in readings:
            self._ts.append(ts)
            self._rows.append(values)
        if model is None or not readings:
            return []
        n_windows = min(len(readings), len(self._ts) - model.preprocessing.window + 1)
        if n_windows <= 0:
            return []
        out: list[ScoredWindow] = []
        # Score in chunks of at most max_batch windows.
        first = len(self._ts) - n_windows
        for s in range(first, len(self._ts), self.max_batch):
            e = min(s + self.max_batch, len(self._ts))
            out.extend(self._score_range(model, likelihood, s, e))
        return out

    def _score_range(self, model: ActiveModel, likelihood: AnomalyLikelihood | None, start: int,
                     end: int) -> list[ScoredWindow]:
        """Score the windows ending at buffer positions start..end-1."""
        p = model.preprocessing
        w = p.window
        rows = [self._rows[i] for i in range(start - w + 1, end)]
        raw = np.array([[_value(r.get(f)) for f in p.features] for r in rows], dtype=np.float64)
        raw_windows = sliding_windows(raw, w)
        x = preprocess_windows(raw_windows, p)
        stuck = stuck_channels(raw_windows, model.stuck) if model.stuck is not None else None
        n = len(x)
        bucket = next((b for b in _BUCKETS if b >= n), n)
        padded = x if bucket == n else np.concatenate([x, np.repeat(x[-1:], bucket - n, axis=0)])
        outputs = {h: v[:n] for h, v in model.model.predict(padded).items()}
        scored = score_outputs(x, outputs, model.scoring)
        errors, contrib, scores = scored.errors, scored.contributions, scored.scores
        decision = model.decision.scaled(self.threshold_scale)
        # Events report the score threshold at this agent's scale (a likelihood decision is on another axis).
        threshold = Decision(DecisionMode.SCORE, model.scoring.threshold, self.threshold_scale).in_force
        lik = likelihood.update(scores, raw[w - 1 :]) if likelihood else np.zeros(n)
        return [
            ScoredWindow(
                ts=self._ts[start + i],
                score=float(scores[i]),
                threshold=threshold,
                reconstruction_error=float(errors.reconstruction[i]),
                prediction_error=float(errors.prediction[i]),
                contributions=contrib[i],
                model_version=model.version,
                window=x[i],
                likelihood=float(lik[i]),
                decision=decision,
                stuck=None if stuck is None else stuck[i],
            )
            for i in range(n)
        ]


def _value(v: float | None) -> float:
    return np.nan if v is None else v


class EpisodeTracker:
    """Turns per-window verdicts into events: one event when a window first crosses the threshold;
    the next only after more than ``rearm`` consecutive normal windows."""

    def __init__(self, rearm: int) -> None:
        self.rearm = rearm
        self.in_episode = False
        self._below = 0

    def update(self, anomalous: bool) -> bool:
        """Feed one window; True when it starts a new episode (raise an event)."""
        if anomalous:
            self._below = 0
            if not self.in_episode:
                self.in_episode = True
                return True
            return False
        if self.in_episode:
            self._below += 1
            if self._below > self.rearm:
                self.in_episode = False
        return False
