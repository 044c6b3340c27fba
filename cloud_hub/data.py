"""Training data: from a CSV file or from readings agents synced, as contiguous normal segments."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud_hub import db
from shared.csvdata import read_series, split_on_gaps


@dataclass
class TrainingData:
    features: list[str]
    segments: list[np.ndarray]  # each (n, f), contiguous in time, NaN = missing
    source: str
    rows: int
    excluded_rows: int = 0
    labels: list[np.ndarray] | None = None  # per segment, (n,) ints (0 = normal), when the CSV has them


def from_csv(path: Path, features: list[str] | None = None, timestamp_column: str = "timestamp",
             label_column: str | None = None) -> TrainingData:
    series = read_series(path, timestamp_column, features, exclude=(label_column,) if label_column else ())
    cuts = split_on_gaps(series.timestamps)
    labels = None
    if label_column:
        lab = read_series(path, timestamp_column, [label_column]).values[:, 0]
        if np.isnan(lab).any() or (lab != np.round(lab)).any() or lab.min() < 0:
            raise ValueError(f"{path}: label column {label_column!r} must hold integers >= 0 (0 = normal)")
        labels = [lab[s].astype(np.int64) for s in cuts]
    segments = [series.values[s] for s in cuts]
    return TrainingData(series.features, segments, f"csv:{path}", len(series.values), labels=labels)


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def npy_load(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def from_synced(session: Session, features: list[str] | None = None, since: float | None = None,
                window: int = 32) -> TrainingData:
    """Readings synced by agents, per device, split at time gaps; windows around flagged rows dropped.

    Rows the agent's model flagged as anomalous are removed together with ``window`` rows either
    side, so retraining does not learn the anomalies it is meant to catch.
    """
    query = select(db.SyncBatch).order_by(db.SyncBatch.device_id, db.SyncBatch.start_ts)
    if since is not None:
        query = query.where(db.SyncBatch.end_ts >= since)
    per_device: dict[str, list[tuple[np.ndarray, np.ndarray, list[str]]]] = {}
    for b in session.scalars(query):
        per_device.setdefault(b.device_id, []).append((npy_load(b.data), npy_load(b.flags), list(b.features)))
    if not per_device:
        raise ValueError("no synced data yet: agents upload readings once `cloud-hub serve` is running")
    if not features:
        seen: dict[str, None] = {}
        for batches in per_device.values():
            for _, _, feats in batches:
                seen.update(dict.fromkeys(feats))
        features = list(seen)
    segments: list[np.ndarray] = []
    rows = excluded = 0
    for batches in per_device.values():
        ts_parts, val_parts, flag_parts = [], [], []
        for data, flags, feats in batches:
            col = {f: i + 1 for i, f in enumerate(feats)}
            vals = np.full((len(data), len(features)), np.nan)
            for j, f in enumerate(features):
                if f in col:
                    vals[:, j] = data[:, col[f]]
            ts_parts.append(data[:, 0])
            val_parts.append(vals)
            flag_parts.append(flags if len(flags) == len(data) else np.zeros(len(data), dtype=np.int8))
        ts = np.concatenate(ts_parts)
        order = np.argsort(ts, kind="stable")
        ts, vals, flags = ts[order], np.concatenate(val_parts)[order], np.concatenate(flag_parts)[order]
        keep = np.ones(len(ts), dtype=bool)
        keep[1:] = np.diff(ts) > 0  # duplicates from redelivered batches
        bad = near_flagged(flags, window)
        rows += int(keep.sum())
        excluded += int((keep & bad).sum())
        for s in split_on_gaps(ts[keep]):
            segments.extend(unflagged_segments(vals[keep][s], bad[keep][s]))
    return TrainingData(features, [s for s in segments if len(s)], "synced", rows, excluded)


def near_flagged(flags: np.ndarray, window: int) -> np.ndarray:
    """(n,) bool: rows within ``window`` rows of a row the agent flagged — kept out of retraining, so a
    model does not learn the anomalies it is meant to catch (one rule for serve's retrain and NAB's)."""
    f = np.asarray(flags).astype(bool)
    c = np.concatenate([[0], np.cumsum(f)])
    i = np.arange(len(f))
    return np.asarray(c[np.minimum(i + window + 1, len(f))] - c[np.maximum(i - window, 0)] > 0)


def unflagged_segments(values: np.ndarray, bad: np.ndarray) -> list[np.ndarray]:
    """The contiguous runs of ``values`` (one time-contiguous segment) whose rows are not ``bad``."""
    out, start = [], None
    for i, b in enumerate([*np.asarray(bad).tolist(), True]):
        if not b and start is None:
            start = i
        elif b and start is not None:
            out.append(values[start:i])
            start = None
    return out
