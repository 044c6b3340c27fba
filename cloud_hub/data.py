"""Training data: from a CSV file or from readings agents synced, as contiguous normal segments."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session

from cloud_hub.db import queries
from shared.csvdata import read_series, split_on_gaps


@dataclass
class TrainingData:
    features: list[str]
    segments: list[np.ndarray]  # each (n, f), contiguous in time, NaN = missing
    source: str
    rows: int
    excluded_rows: int = 0
    labels: list[np.ndarray] | None = None  # per segment, (n,) ints (0 = normal), when the CSV has them
    devices: list[str] = field(default_factory=list)  # synced data: the devices it came from
    start_ts: float | None = None  # time range of the readings (lineage)
    end_ts: float | None = None
    fp_rows: int = 0  # rows kept as normal because an operator labelled them a false positive


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
    ts = series.timestamps
    return TrainingData(series.features, segments, f"csv:{path}", len(series.values), labels=labels,
                        start_ts=float(ts[0]) if len(ts) else None, end_ts=float(ts[-1]) if len(ts) else None)


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def npy_load(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


Span = tuple[float, float]  # [start, end] seconds, inclusive


@dataclass
class SyncedRows:
    """One device's synced readings in time order, duplicates removed: (n,) ts, (n, f) values, (n,) flags."""

    ts: np.ndarray
    values: np.ndarray
    flags: np.ndarray


def synced_rows(session: Session, features: list[str] | None = None, since: float | None = None,
                until: float | None = None, devices: list[str] | None = None) -> tuple[list[str], dict[str, SyncedRows]]:
    """Readings agents synced, per device, as columns ``features`` (default: every feature seen)."""
    per_device: dict[str, list[tuple[np.ndarray, np.ndarray, list[str]]]] = {}
    for b in queries.sync_batches(session, since, until, devices):
        per_device.setdefault(b.device_id, []).append((npy_load(b.data), npy_load(b.flags), list(b.features)))
    if not per_device:
        raise ValueError("no synced data yet: agents upload readings once `cloud-hub serve` is running"
                         + (f" (devices: {', '.join(devices) or 'none'})" if devices is not None else ""))
    if not features:
        seen: dict[str, None] = {}
        for batches in per_device.values():
            for _, _, feats in batches:
                seen.update(dict.fromkeys(feats))
        features = list(seen)
    out: dict[str, SyncedRows] = {}
    for device, batches in per_device.items():
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
        if since is not None:
            keep &= ts >= since
        if until is not None:
            keep &= ts <= until
        if keep.any():
            out[device] = SyncedRows(ts[keep], vals[keep], flags[keep].astype(np.int8))
    return features, out


def in_spans(ts: np.ndarray, spans: list[Span]) -> np.ndarray:
    """(n,) bool: which timestamps fall inside any of ``spans``."""
    mask = np.zeros(len(ts), dtype=bool)
    for a, b in spans:
        mask |= (ts >= a) & (ts <= b)
    return mask


def near_flags(flags: np.ndarray, window: int) -> np.ndarray:
    """(n,) bool: rows within ``window`` rows of a row the agent flagged — kept out of retraining, so a
    model does not learn the anomalies it is meant to catch (one rule for serve's retrain and NAB's).
    Any length (a convolution in "same" mode would return 2·window + 1 values for shorter inputs)."""
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


def from_synced(session: Session, features: list[str] | None = None, since: float | None = None,
                window: int = 32, devices: list[str] | None = None, until: float | None = None,
                normal_spans: dict[str, list[Span]] | None = None,
                excluded_spans: dict[str, list[Span]] | None = None) -> TrainingData:
    """Readings synced by agents, per device, split at time gaps; windows around flagged rows dropped.

    Rows the agent's model flagged as anomalous are removed together with ``window`` rows either
    side, so retraining does not learn the anomalies it is meant to catch.  Operator labels refine that:
    flags inside ``normal_spans`` (false positives) are ignored, so those rows are normal training data;
    rows inside ``excluded_spans`` (true positives) are dropped even if nothing flagged them.
    """
    features, per_device = synced_rows(session, features, since, until, devices)
    segments: list[np.ndarray] = []
    rows = excluded = fp_rows = 0
    for device, r in per_device.items():
        flags = r.flags.copy()
        if normal_spans and normal_spans.get(device):
            cleared = in_spans(r.ts, normal_spans[device])
            fp_rows += int(cleared.sum())
            flags[cleared] = 0
        bad = near_flags(flags, window)
        if excluded_spans and excluded_spans.get(device):
            bad |= in_spans(r.ts, excluded_spans[device])
        rows += len(r.ts)
        excluded += int(bad.sum())
        for s in split_on_gaps(r.ts):
            segments.extend(unflagged_segments(r.values[s], bad[s]))
    starts = [float(r.ts[0]) for r in per_device.values()]
    ends = [float(r.ts[-1]) for r in per_device.values()]
    return TrainingData(features, [s for s in segments if len(s)], "synced", rows, excluded,
                        devices=sorted(per_device), start_ts=min(starts), end_ts=max(ends), fp_rows=fp_rows)
