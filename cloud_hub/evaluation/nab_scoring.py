"""The Numenta Anomaly Benchmark's scoring, as published (numenta/NAB ``nab/sweeper.py`` and
``runner.normalize``), reimplemented on numpy and checked against it row for row.

For each file: rows in the probationary period (the first min(⌊15 % · n⌋, 750)) are not scored, and
a window counts only if at least one of its rows lies after that period.  A detection at row i
inside a window [a, b] earns tp_weight · σ'(−(b − i + 1)/(b − a + 1)) / σ'(−1), with
σ'(p) = 2·sigmoid(−5p) − 1 (−1 for p > 3); only the best (earliest) detection in a window counts,
and a window without one costs −fn_weight.  A detection outside every window costs
fp_weight · σ'(|i − b_prev| / (width_prev − 1)) after a window, fp_weight · −1 before the first.
Corpus normalisation: 100 · (raw − null) / (perfect − null), where null is the raw score of the
detector that never fires and perfect = tp_weight × the number of labelled windows.  Detections are
rows whose anomaly score is >= the threshold; the agent's own decisions are the ``is_anomaly`` 0/1
column, i.e. the same rule at threshold 0.5.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.csvdata import parse_timestamp

PROFILES_DEFAULT = {
    "standard": {"tpWeight": 1.0, "fnWeight": 1.0, "fpWeight": 0.11},
    "reward_low_FP_rate": {"tpWeight": 1.0, "fnWeight": 1.0, "fpWeight": 0.22},
    "reward_low_FN_rate": {"tpWeight": 1.0, "fnWeight": 2.0, "fpWeight": 0.11},
}


def scaled_sigmoid(position: float) -> float:
    if position > 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * position)) - 1.0


MAX_TP = scaled_sigmoid(-1.0)


def probationary_length(n: int, fraction: float = 0.15) -> int:
    return int(min(math.floor(fraction * n), fraction * 5000))


def load_profiles(nab_dir: Path) -> dict[str, dict[str, float]]:
    path = nab_dir / "config" / "profiles.json"
    if not path.exists():
        return PROFILES_DEFAULT
    raw = json.loads(path.read_text())
    return {name: {k: float(v) for k, v in p["CostMatrix"].items()} for name, p in raw.items()}


def window_indices(timestamps: np.ndarray, windows: list[list[str]]) -> list[tuple[int, int]]:
    """Label windows (timestamp pairs) → inclusive row index ranges."""
    out = []
    for start, end in windows:
        a = int(np.searchsorted(timestamps, parse_timestamp(start), side="left"))
        b = int(np.searchsorted(timestamps, parse_timestamp(end), side="right")) - 1
        if b >= a:
            out.append((a, b))
    return out


@dataclass
class FileScorer:
    """Per-row sweep scores of one file, ready to be scored at any threshold."""

    n: int
    probation: int
    windows: list[tuple[int, int]]
    window_of: np.ndarray  # (n,) window id or -1
    tp_unit: np.ndarray  # (n,) scaled_sigmoid/MAX_TP inside windows
    fp_unit: np.ndarray  # (n,) scaled_sigmoid outside windows (negative)

    @classmethod
    def build(cls, n: int, windows: list[tuple[int, int]]) -> FileScorer:
        window_of = np.full(n, -1)
        tp_unit = np.zeros(n)
        fp_unit = np.zeros(n)
        prev_right: int | None = None
        prev_width = 0.0
        bounds = sorted(windows)
        w = 0
        for i in range(n):
            while w < len(bounds) and bounds[w][1] < i:
                prev_right, prev_width = bounds[w][1], float(bounds[w][1] - bounds[w][0] + 1)
                w += 1
            if w < len(bounds) and bounds[w][0] <= i <= bounds[w][1]:
                a, b = bounds[w]
                window_of[i] = w
                tp_unit[i] = scaled_sigmoid(-(b - i + 1) / float(b - a + 1)) / MAX_TP
            else:
                # NAB divides by (width - 1); a one-row window would divide by zero there.
                fp_unit[i] = -1.0 if prev_right is None else scaled_sigmoid(
                    abs(prev_right - i) / max(prev_width - 1, 1.0))
        return cls(n, probationary_length(n), bounds, window_of, tp_unit, fp_unit)

    def scored_windows(self) -> list[int]:
        """Windows with at least one row after the probationary period (the others are not scored)."""
        return sorted({int(w) for w in self.window_of[self.probation:] if w >= 0})

    def score(self, detections: np.ndarray, profile: dict[str, float]) -> dict[str, float]:
        """Raw score and counts for boolean per-row detections."""
        d = np.asarray(detections, bool).copy()
        d[: self.probation] = False
        outside = d & (self.window_of < 0)
        fp_score = profile["fpWeight"] * float(self.fp_unit[outside].sum())
        tp_score = fn_score = 0.0
        tp = fn = 0
        for w in self.scored_windows():
            hits = d & (self.window_of == w)
            if hits.any():
                tp_score += profile["tpWeight"] * float(self.tp_unit[hits].max())
                tp += 1
            else:
                fn_score -= profile["fnWeight"]
                fn += 1
        return {"score": tp_score + fp_score + fn_score, "tp": tp, "fn": fn, "fp": int(outside.sum())}

    def perfect(self) -> np.ndarray:
        """Detections at the first scored row of every scored window."""
        d = np.zeros(self.n, bool)
        for w in self.scored_windows():
            rows = np.flatnonzero(self.window_of == w)
            d[int(rows[rows >= self.probation][0])] = True
        return d


def normalised(raw: float, null: float, perfect: float) -> float:
    return 100.0 * (raw - null) / (perfect - null) if perfect != null else 0.0


def perfect_score(files: list[FileScorer], profile: dict[str, float]) -> float:
    """NAB's perfect raw score: tp_weight for every labelled window (``runner.normalize``)."""
    return profile["tpWeight"] * sum(len(f.windows) for f in files)


@dataclass
class CorpusResult:
    scores: dict[str, float]  # profile → normalised score
    thresholds: dict[str, float]
    counts: dict[str, dict[str, int]]


def score_corpus(files: list[tuple[FileScorer, np.ndarray]], profiles: dict[str, dict[str, float]],
                 threshold: float | None = None, decisions: list[np.ndarray] | None = None) -> CorpusResult:
    """Normalised corpus scores.  With ``decisions`` the detector's own 0/1 flags are scored; otherwise
    detections are score >= threshold, and without a threshold the best one per profile is searched
    (as NAB's optimiser does), over a grid fine enough near the top of the score range."""
    scores, thresholds, counts = {}, {}, {}
    all_scores = np.concatenate([s for _, s in files]) if files else np.zeros(1)
    for name, prof in profiles.items():
        null = sum(f.score(np.zeros(f.n, bool), prof)["score"] for f, _ in files)
        perfect = perfect_score([f for f, _ in files], prof)

        def total(det: list[np.ndarray], prof: dict[str, float] = prof) -> tuple[float, dict[str, int]]:
            parts = [f.score(d, prof) for (f, _), d in zip(files, det, strict=True)]
            return sum(p["score"] for p in parts), {k: sum(int(p[k]) for p in parts) for k in ("tp", "fn", "fp")}

        if decisions is not None:
            raw, c = total(decisions)
            scores[name], counts[name], thresholds[name] = normalised(raw, null, perfect), c, float("nan")
            continue
        candidates = [threshold] if threshold is not None else candidate_thresholds(all_scores)
        best: tuple[float, float, dict[str, int]] = (-math.inf, 0.0, {})
        for t in candidates:
            raw, c = total([s >= t for _, s in files])
            if raw > best[0]:
                best = (raw, t, c)
        scores[name], thresholds[name], counts[name] = normalised(best[0], null, perfect), best[1], best[2]
    return CorpusResult(scores, thresholds, counts)


def candidate_thresholds(scores: np.ndarray) -> list[float]:
    finite = scores[np.isfinite(scores)]
    if not len(finite):
        return [1.0]
    qs = np.unique(np.concatenate([np.linspace(0.0, 1.0, 51), 1 - np.logspace(-6, -0.3, 150)]))
    return sorted(set(np.quantile(finite, qs).tolist()) | {float(finite.max()) + 1e-9})
