"""Reading time-series CSV files (timestamp column + numeric columns) without pandas."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Series:
    timestamps: np.ndarray  # (n,) float seconds since epoch, ascending
    features: list[str]
    values: np.ndarray  # (n, f) float64, NaN = missing


def parse_timestamp(text: str) -> float:
    """Epoch seconds or ISO-8601 (naive times are taken as UTC)."""
    text = text.strip()
    try:
        value = float(text)
        if math.isfinite(value):
            return value
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"unparseable timestamp {text!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def header_of(reader: Iterator[list[str]], path: Path, required: str | None) -> list[str]:
    """The stripped header row; ``required`` must be one of its columns."""
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise ValueError(f"{path} is empty") from None
    if required and required not in header:
        raise ValueError(f"{path}: no {required!r} column (columns: {header})")
    return header


def data_rows(reader: Iterator[list[str]], header: list[str], path: Path) -> Iterator[tuple[str, list[str]]]:
    """Non-empty data rows with their location ("path:line"); a row of the wrong width is an error."""
    for line_no, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise ValueError(f"{path}:{line_no}: expected {len(header)} cells, got {len(row)}")
        yield f"{path}:{line_no}", row


def cell(text: str, where: str) -> float:
    """A numeric cell; empty, nan, null, NA and '-' are missing (NaN)."""
    text = text.strip()
    if text == "" or text.lower() in ("nan", "null", "na", "-"):
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{where}: not a number: {text!r}") from None


def read_series(
    path: Path, timestamp_column: str = "timestamp", features: list[str] | None = None, exclude: tuple[str, ...] = ()
) -> Series:
    """Load a CSV, sorted by time. ``features`` picks columns (default: all but timestamp/exclude)."""
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        header = header_of(reader, path, timestamp_column)
        names = features or [h for h in header if h != timestamp_column and h not in exclude]
        missing = [n for n in names if n not in header]
        if missing or not names:
            raise ValueError(f"{path}: columns {missing or 'to use'} not found (columns: {header})")
        t_idx = header.index(timestamp_column)
        idx = [header.index(n) for n in names]
        ts, rows = [], []
        for where, row in data_rows(reader, header, path):
            ts.append(parse_timestamp(row[t_idx]))
            rows.append([cell(row[i], where) for i in idx])
    if not rows:
        raise ValueError(f"{path} has no data rows")
    t = np.asarray(ts)
    order = np.argsort(t, kind="stable")
    return Series(timestamps=t[order], features=names, values=np.asarray(rows, dtype=np.float64)[order])


def split_on_gaps(timestamps: np.ndarray, max_gap_factor: float = 5.0) -> list[slice]:
    """Contiguous stretches: a gap longer than ``max_gap_factor`` × the median step starts a new one."""
    if len(timestamps) < 2:
        return [slice(0, len(timestamps))]
    dt = np.diff(timestamps)
    step = float(np.median(dt)) or 1.0
    cuts = np.nonzero(dt > max_gap_factor * step)[0] + 1
    bounds = [0, *cuts.tolist(), len(timestamps)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
