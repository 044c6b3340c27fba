"""Tabular samples (network flows and other per-row records): read, impute, compress, scale.

Rows become model samples of shape ``(features, 1)``.  Missing cells are filled with the training
median, every value is compressed with a signed log1p (byte and packet counts span many orders of
magnitude) and min-max scaled with the training range.  Fitted once, on training rows only.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.csvdata import cell, data_rows, header_of
from shared.schema import doc, dump, load


@dataclass(frozen=True)
class Table:
    features: list[str]
    x: np.ndarray  # (n, f) float64, NaN = missing
    y: np.ndarray | None  # (n,) int64 labels, 0 = normal


def read_table(path: Path, label_column: str | None = "label", exclude: tuple[str, ...] = ()) -> Table:
    """A CSV of numeric columns (empty / nan / NA cells are missing) and an integer label column."""
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        header = header_of(reader, path, label_column)
        names = [h for h in header if h != label_column and h not in exclude]
        idx = [header.index(n) for n in names]
        li = header.index(label_column) if label_column else -1
        rows, labels = [], []
        for where, row in data_rows(reader, header, path):
            rows.append([cell(row[i], where) for i in idx])
            if label_column:
                lab = cell(row[li], where)
                if math.isnan(lab) or lab != int(lab) or lab < 0:
                    raise ValueError(f"{where}: label must be an integer >= 0, got {row[li]!r}")
                labels.append(int(lab))
    if not rows:
        raise ValueError(f"{path} has no data rows")
    return Table(names, np.asarray(rows, np.float64), np.asarray(labels, np.int64) if label_column else None)


@dataclass(frozen=True)
class TabularParams:
    """Fitted tabular preprocessing."""

    features: list[str] = doc("Column names, in model input order.")
    fill: list[float] = doc("Training median per column (fills missing cells).")
    scale_min: list[float] = doc("Per-column minimum after log compression.")
    scale_max: list[float] = doc("Per-column maximum after log compression.")

    def to_dict(self) -> dict[str, Any]:
        return dump(self)  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls, data: Any) -> TabularParams:
        return load(cls, data)


def _compress(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


def fit_tabular(x: np.ndarray, features: list[str]) -> TabularParams:
    med = np.nanmedian(np.where(np.isnan(x).all(axis=0), 0.0, x), axis=0) if len(x) else np.zeros(x.shape[1])
    med = np.nan_to_num(med)
    c = _compress(np.where(np.isnan(x), med, x))
    return TabularParams(features, med.tolist(), c.min(axis=0).tolist(), c.max(axis=0).tolist())


def apply_tabular(x: np.ndarray, p: TabularParams) -> np.ndarray:
    """(n, f) raw rows → (n, f, 1) float32 samples (unclipped: out-of-range values stay visible)."""
    fill = np.asarray(p.fill)
    c = _compress(np.where(np.isnan(x), fill, x))
    lo, hi = np.asarray(p.scale_min), np.asarray(p.scale_max)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    return ((c - lo) / span).astype(np.float32)[:, :, None]
