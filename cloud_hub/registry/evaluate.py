"""Challenger vs champion on the same data: held-out recent synced readings plus operator labels.

Each version scores the windows with its own preprocessing and decision: by default its exported
bundle through the agent's own streaming path (:func:`score_bundle`: ring buffer, LiteRT, scoring,
streaming likelihood, decision — what the devices would run), else the hub's float model
(:func:`score_versions`).  Windows are sorted by the reading that ends them:

- **normal**: in the held-out recent slice, outside every labelled stretch and away from readings the
  running agent flagged without an operator label (those are unknown, neither normal nor anomalous);
- **false-positive stretches**: around events an operator labelled false positive (anywhere in time);
- **true-positive stretches**: around events labelled true positive (never trained on).

cost = false-alarm rate on normal windows + fraction of FP-labelled events still flagged + fraction of
TP-labelled events missed (an event counts as flagged when any window of its stretch is).  Lower wins.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy.orm import Session

from cloud_hub.data import Span, SyncedRows, in_spans, near_flags
from cloud_hub.db import LabelKind
from cloud_hub.models import Detector
from cloud_hub.registry.labels import labelled_events
from shared.csvdata import Series, split_on_gaps
from shared.preprocessing import PreprocessParams, preprocess_windows, sliding_windows

if TYPE_CHECKING:
    from shared.bundle import Bundle

MAX_NORMAL_WINDOWS = 20_000  # evenly subsampled beyond: Keras scoring on the hub's CPU stays seconds
REPLAY_WARMUP = 1_000  # a bundle's replay starts this many readings before the first window it must judge
MAX_THRESHOLD_RAISE = 3.0  # label calibration never lifts a threshold above 3x the learned one


@dataclass(frozen=True)
class LabelSpans:
    """Labelled events as stretches of readings per device: events[i] = (device, span)."""

    fp: list[tuple[str, Span]]
    tp: list[tuple[str, Span]]

    def by_device(self, kind: LabelKind) -> dict[str, list[Span]]:
        out: dict[str, list[Span]] = {}
        for device, span in self.fp if kind == LabelKind.FALSE_POSITIVE else self.tp:
            out.setdefault(device, []).append(span)
        return out


def label_spans(session: Session, rows: dict[str, SyncedRows], window: int, span_windows: float,
                devices: list[str] | None = None) -> LabelSpans:
    """Each labelled event → [ts - h, ts + h] with h = ``span_windows`` × ``window`` × the device's
    median reading interval (1 s if its synced data cannot tell)."""
    fp: list[tuple[str, Span]] = []
    tp: list[tuple[str, Span]] = []
    for ev in labelled_events(session, devices):
        r = rows.get(ev.device_id)
        dt = float(np.median(np.diff(r.ts))) if r is not None and len(r.ts) > 1 else 1.0
        half = span_windows * window * dt
        (fp if ev.label == LabelKind.FALSE_POSITIVE else tp).append((ev.device_id, (ev.ts - half, ev.ts + half)))
    return LabelSpans(fp, tp)


@dataclass
class EvalSet:
    """The data every contender is scored on (raw readings; each version applies its own preprocessing)."""

    features: list[str]
    rows: dict[str, SyncedRows]
    cut: float  # readings at or after this are the held-out recent slice
    spans: LabelSpans
    window_hint: int  # how far around an unlabelled agent flag readings count as unknown


def holdout_cut(rows: dict[str, SyncedRows], fraction: float) -> float:
    """The time after which the most recent ``fraction`` of the synced time range lies."""
    t0 = min(float(r.ts[0]) for r in rows.values())
    t1 = max(float(r.ts[-1]) for r in rows.values())
    return t0 + (1 - fraction) * (t1 - t0)


@dataclass
class Scored:
    normal_flags: np.ndarray
    fp_event_flagged: list[bool]
    tp_event_flagged: list[bool]
    fp_scores: np.ndarray  # every window score inside FP stretches
    tp_event_max: list[float]  # per TP event, its highest window score


Segment = tuple[str, np.ndarray, np.ndarray]  # device, timestamps, values in the model's feature order
# Scores and the decision for the windows (segment index, window index) asked for, in that order.
WindowScorer = Callable[[list[tuple[int, int]]], tuple[np.ndarray, np.ndarray]]


def _segments(es: EvalSet, pre: PreprocessParams) -> list[Segment]:
    """Contiguous runs of readings at least one window long, columns in the model's feature order."""
    missing = [f for f in pre.features if f not in es.features]
    if missing:
        raise ValueError(f"the synced data has no column(s) {missing} this model needs")
    cols = [es.features.index(f) for f in pre.features]
    out = []
    for device, r in es.rows.items():
        for s in split_on_gaps(r.ts):
            if len(r.ts[s]) >= pre.window:
                out.append((device, r.ts[s], r.values[s][:, cols]))
    return out


def score_versions(es: EvalSet, pre: PreprocessParams, detector: Detector) -> Scored:
    """Score the evaluation windows with one version's float model and sort the flags into the three kinds."""
    segs = _segments(es, pre)
    wins = [sliding_windows(values, pre.window) for _, _, values in segs]

    def scorer(idx: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
        # one scoring call: one batch shape for the model
        scores = (np.asarray(detector.score(preprocess_windows(np.stack([wins[k][i] for k, i in idx]), pre)),
                             np.float64) if idx else np.empty(0))
        return scores, detector.decision.flags(scores)

    return _sort(es, segs, pre.window, scorer, subsample=True)


def score_bundle(es: EvalSet, bundle: Bundle) -> Scored:
    """Score the evaluation windows with a signed bundle exactly as an agent would: each segment that holds
    a window to judge is replayed in time order through ``edge_agent.replay.Replayer`` (the agent's
    detector, LiteRT, streaming likelihood and decision), from REPLAY_WARMUP readings before its first
    such window (an agent that just started there).  Every held-out window is judged (no subsampling:
    the replay is streaming, and the interpreter scores thousands of windows per second)."""
    from edge_agent.replay import Replayer

    pre = bundle.manifest.preprocessing
    segs = _segments(es, pre)
    w = pre.window

    def scorer(idx: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
        span: dict[int, tuple[int, int]] = {}
        for k, i in idx:
            lo, hi = span.get(k, (i, i))
            span[k] = (min(lo, i), max(hi, i))
        replayed: dict[int, tuple[int, np.ndarray, np.ndarray]] = {}
        for k, (lo, hi) in span.items():
            _, ts, values = segs[k]
            first, stop = max(0, lo - REPLAY_WARMUP), hi + w  # rows [first, stop) end windows lo..hi
            r = Replayer(bundle, Series(ts[first:stop], list(pre.features), values[first:stop]))
            r.advance(stop - first)
            replayed[k] = (first, r.score, r.anomalous)
        rows = [(replayed[k], i + w - 1 - replayed[k][0]) for k, i in idx]
        scores = np.array([rep[1][row] for rep, row in rows], dtype=np.float64)
        flags = np.array([bool(rep[2][row]) for rep, row in rows], dtype=bool)
        return scores, flags

    return _sort(es, segs, w, scorer, subsample=False)


def _sort(es: EvalSet, segs: list[Segment], window: int, scorer: WindowScorer, subsample: bool) -> Scored:
    """Sort every window by the reading that ends it (normal / FP stretch / TP stretch), score them with
    ``scorer``, and gather the flags per kind and per labelled event."""
    # (segment, window index, event index)
    normal_idx: list[tuple[int, int, int]] = []
    fp_idx: list[tuple[int, int, int]] = []
    tp_idx: list[tuple[int, int, int]] = []
    fp_events, tp_events = es.spans.fp, es.spans.tp
    for k, (device, ts, _) in enumerate(segs):
        ts_end = ts[window - 1:]
        r = es.rows[device]
        unknown = near_flags(r.flags, es.window_hint)
        # readings the agent flagged, unless an operator labelled them: map each window end to its row
        row_of = np.searchsorted(r.ts, ts_end)
        labelled = np.zeros(len(ts_end), dtype=bool)
        for events, out in ((fp_events, fp_idx), (tp_events, tp_idx)):
            for e, (dev, span) in enumerate(events):
                if dev != device:
                    continue
                inside = np.nonzero(in_spans(ts_end, [span]))[0]
                labelled[inside] = True
                out.extend((k, int(i), e) for i in inside)
        normal = (ts_end >= es.cut) & ~labelled & ~unknown[row_of]
        normal_idx.extend((k, int(i), -1) for i in np.nonzero(normal)[0])
    if subsample and len(normal_idx) > MAX_NORMAL_WINDOWS:
        keep = np.linspace(0, len(normal_idx) - 1, MAX_NORMAL_WINDOWS).astype(int)
        normal_idx = [normal_idx[i] for i in keep]

    every = normal_idx + fp_idx + tp_idx
    all_scores, all_flags = scorer([(k, i) for k, i, _ in every])
    n, f = len(normal_idx), len(fp_idx)
    f_scores, t_scores = all_scores[n:n + f], all_scores[n + f:]
    n_flags, f_flags, t_flags = all_flags[:n], all_flags[n:n + f], all_flags[n + f:]
    fp_flagged = [False] * len(fp_events)
    for (_, _, e), fl in zip(fp_idx, f_flags, strict=True):
        fp_flagged[e] |= bool(fl)
    tp_flagged = [False] * len(tp_events)
    tp_max = [-math.inf] * len(tp_events)
    for (_, _, e), fl, sc in zip(tp_idx, t_flags, t_scores, strict=True):
        tp_flagged[e] |= bool(fl)
        if math.isfinite(sc):
            tp_max[e] = max(tp_max[e], float(sc))
    # events whose stretch has no synced window at all cannot be judged: leave them out
    fp_seen = {e for _, _, e in fp_idx}
    tp_seen = {e for _, _, e in tp_idx}
    return Scored(n_flags, [fp_flagged[e] for e in sorted(fp_seen)], [tp_flagged[e] for e in sorted(tp_seen)],
                  f_scores, [tp_max[e] for e in sorted(tp_seen)])


def metrics(s: Scored, threshold: float) -> dict[str, Any]:
    """The numbers a decision is made on (stored with it)."""
    far = float(np.mean(s.normal_flags)) if len(s.normal_flags) else 0.0
    fp_still = float(np.mean(s.fp_event_flagged)) if s.fp_event_flagged else 0.0
    recall = float(np.mean(s.tp_event_flagged)) if s.tp_event_flagged else None
    cost = far + fp_still + (1.0 - recall if recall is not None else 0.0)
    return {"cost": cost, "false_alarm_rate": far, "normal_windows": len(s.normal_flags),
            "fp_events": len(s.fp_event_flagged), "fp_events_flagged": int(sum(s.fp_event_flagged)),
            "tp_events": len(s.tp_event_flagged), "tp_events_caught": int(sum(s.tp_event_flagged)),
            "tp_recall": recall, "threshold": threshold}


def label_threshold(threshold: float, fp_scores: np.ndarray, tp_event_max: list[float]) -> float:
    """Labels → threshold: lift it just above every false-positive-labelled window's score, but never so far
    that a true-positive-labelled event would be missed, nor above MAX_THRESHOLD_RAISE × the learned one.
    Never lowers it (a missed true positive is the model's problem, not the threshold's)."""
    if not len(fp_scores):
        return threshold
    target = float(np.max(fp_scores)) * (1 + 1e-6) + 1e-12
    finite_tp = [t for t in tp_event_max if math.isfinite(t)]
    if finite_tp:
        target = min(target, min(finite_tp) * (1 - 1e-6))
    return max(threshold, min(target, threshold * MAX_THRESHOLD_RAISE))


def with_threshold(detector: Detector, threshold: float) -> None:
    """Set a detector's threshold so its export learns the same one: the margin on the validation quantile
    scales by the same factor (export re-learns the threshold on the exported model's own scores)."""
    factor = threshold / detector.threshold
    detector.cfg = replace(detector.cfg, threshold_margin=detector.cfg.threshold_margin * factor)
    detector.threshold = threshold
