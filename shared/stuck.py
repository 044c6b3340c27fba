"""Stuck sensors: a channel whose readings stop varying, judged against its own normal variability.

A reconstruction model reproduces a frozen value almost perfectly, so its error barely moves; this
check does not depend on the model.  On the hub, for every channel, the rolling standard deviation
over ``window`` raw readings is computed on normal training data and its low quantile kept as
``min_std``.  On the edge, a channel is stuck when its standard deviation over the newest ``window``
readings falls below ``ratio × min_std`` (a frozen value gives exactly 0).  A channel that is already
flat in training (``min_std`` = 0, e.g. a setpoint or a quantised counter) is never checked.  Missing
readings are ignored; a window needs half of its readings present to be judged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.preprocessing import sliding_windows
from shared.schema import doc, dump, load


@dataclass(frozen=True)
class StuckParams:
    """Per-channel variance-collapse check; carried in the bundle."""

    window: int = doc("Newest raw readings per check (at most the model's window).")
    min_std: list[float] = doc("Per feature: low quantile of the rolling standard deviation over `window` "
                               "readings on normal training data (0 = flat in training: never checked).")
    ratio: float = doc("A channel is stuck when its rolling standard deviation is below ratio × min_std.",
                       default=0.05)

    def __post_init__(self) -> None:
        if self.window < 2 or not 0 < self.ratio < 1 or not self.min_std or min(self.min_std) < 0:
            raise ValueError("stuck check: window >= 2, 0 < ratio < 1, min_std >= 0 per feature")

    def to_dict(self) -> dict[str, Any]:
        return dump(self)  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls, data: Any) -> StuckParams:
        return load(cls, data)


def _rolling_std(windows: np.ndarray) -> np.ndarray:
    """(b, k, f) → (b, f) standard deviation over k, NaN-aware; NaN where under half the values exist."""
    with np.errstate(invalid="ignore", over="ignore"):  # the first pass of numpy's std
        sums = np.add.reduce(windows, axis=1, keepdims=True)
    full = np.isfinite(sums).all(axis=(1, 2))  # a NaN or ±inf anywhere makes its channel's sum non-finite
    if full.all():  # the common case
        return _std(windows, sums)
    if full.any():  # complete windows the fast way, the few with gaps below (same values either way)
        out = np.empty((len(windows), windows.shape[2]))
        out[full] = _std(windows[full], sums[full])
        out[~full] = _nan_aware_std(windows[~full])
        return out
    return _nan_aware_std(windows)


def _std(windows: np.ndarray, sums: np.ndarray) -> np.ndarray:
    """``windows.std(axis=1)`` pass for pass (numpy's two-pass mean / mean-square formula, the same
    numbers), reusing the sums already taken and without its Python wrapper (the single-reading path)."""
    k = windows.shape[1]
    mean = np.true_divide(sums, k, out=sums)
    dev = np.subtract(windows, mean)
    np.square(dev, out=dev)
    var = np.add.reduce(dev, axis=1)
    np.true_divide(var, k, out=var)
    return np.sqrt(var, out=var)


def _nan_aware_std(windows: np.ndarray) -> np.ndarray:
    present = np.isfinite(windows)
    n = present.sum(axis=1)
    x = np.where(present, windows, 0.0)
    mean = x.sum(axis=1) / np.maximum(n, 1)
    var = (np.where(present, (windows - mean[:, None, :]) ** 2, 0.0)).sum(axis=1) / np.maximum(n, 1)
    std = np.sqrt(var)
    return np.where(n * 2 >= windows.shape[1], std, np.nan)


def fit_stuck(segments: list[np.ndarray], window: int, quantile: float = 0.001, ratio: float = 0.05) -> StuckParams:
    """Learn ``min_std`` per channel from normal raw segments, each (n, f) in time order."""
    stds = [_rolling_std(sliding_windows(s, window)) for s in segments if len(s) >= window]
    if not stds:
        raise ValueError(f"no segment has {window} readings to learn the stuck-sensor check from")
    all_std = np.concatenate(stds)
    min_std = []
    for c in range(all_std.shape[1]):
        col = all_std[:, c]
        col = col[np.isfinite(col)]
        min_std.append(float(np.quantile(col, quantile)) if len(col) else 0.0)
    return StuckParams(window=window, min_std=min_std, ratio=ratio)


def stuck_channels(windows: np.ndarray, params: StuckParams) -> np.ndarray:
    """(b, f) bool: which channels are stuck in each window of raw readings (b, w, f), judged on the
    newest ``params.window`` readings."""
    w = np.asarray(windows, np.float64)
    if w.shape[1] < params.window:
        raise ValueError(f"the stuck check needs {params.window} readings per window, got {w.shape[1]}")
    std = _rolling_std(w[:, -params.window :, :])
    limit = np.asarray(params.min_std) * params.ratio
    with np.errstate(invalid="ignore"):
        return (limit > 0) & (std < limit)


def _rolling_range(series: np.ndarray, k: int) -> np.ndarray:
    """(n, f) → (n - k + 1, f): max − min of the finite values of every k consecutive rows (NaN where none),
    in O(n·f) (van Herk / Gil-Werman: prefix and suffix extremes of k-row blocks) rather than O(n·k·f)."""
    n, f = series.shape
    m = -(-n // k) * k
    x = np.full((m, f), np.nan)
    x[:n] = series
    x[:n][~np.isfinite(series)] = np.nan  # ±inf is no value to the nan-aware std either
    blocks = x.reshape(m // k, k, f)
    out = []
    for op in (np.fmax, np.fmin):  # NaN-ignoring
        prefix = op.accumulate(blocks, axis=1).reshape(m, f)
        suffix = op.accumulate(blocks[:, ::-1], axis=1)[:, ::-1].reshape(m, f)
        out.append(op(suffix[: n - k + 1], prefix[k - 1 : n]))
    return np.subtract(out[0], out[1], out=out[0])


def stuck_in_series(series: np.ndarray, window: int, params: StuckParams) -> np.ndarray:
    """``stuck_channels(sliding_windows(series, window), params)`` — the same decisions — with the exact
    standard deviation taken only where a window could be stuck.

    A population standard deviation over k values is at least range / sqrt(2k) (the spread is smallest with
    two values at the extremes and the rest at their midpoint; over the m ≤ k finite values the nan-aware
    path uses, range / sqrt(2m) ≥ range / sqrt(2k)).  So a channel whose rolling range (finite values, O(n)
    on the series) reaches limit · sqrt(2k) by a margin far above the computed std's rounding (relative
    ~k·1e-16) is not stuck; only the rest, normally none, go through ``stuck_channels``."""
    x = np.asarray(series, np.float64)
    if x.ndim != 2:
        raise ValueError("series must be 2-D (rows, features)")
    k = params.window
    if window < k:
        raise ValueError(f"the stuck check needs {k} readings per window, got {window}")
    b = len(x) - window + 1
    if b <= 0:
        return np.zeros((0, x.shape[1]), bool)
    limit = np.asarray(params.min_std) * params.ratio
    rng = _rolling_range(x, k)[window - k : window - k + b]
    with np.errstate(invalid="ignore"):
        sure = rng >= limit * (math.sqrt(2 * k) * (1 + 1e-9))  # NaN range (no finite value): not sure
    candidate = (limit > 0) & ~sure
    out = np.zeros((b, x.shape[1]), bool)
    rows = np.flatnonzero(candidate.any(axis=1))
    if len(rows):
        wins = np.lib.stride_tricks.sliding_window_view(x, window, axis=0)[rows]  # (r, f, window)
        exact = stuck_channels(np.ascontiguousarray(wins.transpose(0, 2, 1)), params)
        out[rows] = exact
    return out


def stuck_onsets(stuck: np.ndarray, before: np.ndarray | None = None) -> np.ndarray:
    """(b, f): channels that *became* stuck at each window — stuck there but not in the window before
    (``before``: the previous batch's last row, None = not stuck).  The agent alarms on onsets, one alarm
    per stuck episode, as the likelihood's onsets give one per excursion; every stuck window is still
    attributed to its channel."""
    s = np.asarray(stuck, bool)
    if not len(s):
        return s
    first = np.zeros((1, s.shape[1]), bool) if before is None else np.asarray(before, bool).reshape(1, -1)
    return s & ~np.vstack([first, s[:-1]])
