"""Preprocessing shared by training (hub) and scoring (edge).

Everything operates on *windows* of raw readings, shape ``(batch, window, features)``: the hub turns a
series into sliding windows and preprocesses them in one vectorised call, the edge preprocesses the
latest window of its ring buffer with the very same function.  That is what makes the two sides
produce identical arrays (tests/test_preprocessing.py proves it).

Steps, in the order of the AE-LSTM paper: linear interpolation of missing values → wavelet denoising
(soft thresholding with a per-feature threshold fitted on training data) → min-max scaling fitted on
training data.  Values outside the training range are *not* clipped: they are the anomaly signal.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pywt

from shared.schema import doc, dump, load

FloatArray = np.ndarray


@dataclass(frozen=True)
class PreprocessParams:
    """Everything needed to reproduce preprocessing; carried in every model bundle."""

    features: list[str] = doc("Feature (channel) names, in model input order.")
    window: int = doc("Readings per window fed to the model.")
    wavelet: str = doc("PyWavelets wavelet name used for denoising.", default="db4")
    wavelet_level: int = doc("Decomposition level; 0 disables denoising.", default=1)
    denoise_threshold: list[float] = doc("Soft threshold per feature, in raw units.", default_factory=list)
    scale_min: list[float] = doc("Per-feature minimum seen in training (after denoising).", default_factory=list)
    scale_max: list[float] = doc("Per-feature maximum seen in training (after denoising).", default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.features)
        if n == 0:
            raise ValueError("at least one feature is required")
        if len(set(self.features)) != n:
            raise ValueError("feature names must be unique")
        if self.window < 4:
            raise ValueError("window must be at least 4 readings")
        if self.wavelet_level < 0:
            raise ValueError("wavelet_level must be >= 0")
        for name in ("denoise_threshold", "scale_min", "scale_max"):
            values = getattr(self, name)
            if values and len(values) != n:
                raise ValueError(f"{name} needs one value per feature ({n})")
        if self.wavelet_level > 0 and self.wavelet not in pywt.wavelist(kind="discrete"):
            raise ValueError(f"unknown wavelet {self.wavelet!r}")

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def fitted(self) -> bool:
        return bool(self.scale_min) and bool(self.scale_max)

    def to_dict(self) -> dict[str, Any]:
        return dump(self)  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls, data: Any) -> PreprocessParams:
        return load(cls, data)


def sliding_windows(series: FloatArray, window: int) -> FloatArray:
    """All windows of ``window`` consecutive rows: (n, f) → (n - window + 1, window, f)."""
    series = np.asarray(series, dtype=np.float64)
    if series.ndim != 2:
        raise ValueError("series must be 2-D (rows, features)")
    if len(series) < window:
        return np.empty((0, window, series.shape[1]))
    view = np.lib.stride_tricks.sliding_window_view(series, window, axis=0)  # (n-w+1, f, w)
    return np.ascontiguousarray(view.transpose(0, 2, 1))


def interpolate_gaps(windows: FloatArray, fallback: FloatArray | None = None) -> FloatArray:
    """Fill NaNs along the time axis by linear interpolation; ends hold the nearest value.

    A channel that is missing for the whole window takes ``fallback`` (per feature, default 0).
    """
    x = np.asarray(windows, dtype=np.float64)
    b_idx, f_idx = _gap_lines(x.transpose(0, 2, 1))
    if not len(b_idx):  # without gaps, no copy
        return x
    x = x.copy()
    _fill_lines(x.transpose(0, 2, 1), b_idx, f_idx, fallback)
    return x


def _gap_lines(lines: FloatArray) -> tuple[np.ndarray, np.ndarray]:
    """(window, channel) indices of the lines (b, f, w) that hold a NaN."""
    # A line with a NaN has a NaN sum: one pass over the data finds the candidates (a sum can also be NaN
    # from ±inf, so the exact mask is taken on the candidates only).
    with np.errstate(invalid="ignore", over="ignore"):  # inf − inf, or a huge sum: still a candidate or none
        b_idx, f_idx = np.nonzero(np.isnan(lines.sum(axis=2)))
    if len(b_idx):
        gap = np.isnan(lines[b_idx, f_idx]).any(axis=1)
        b_idx, f_idx = b_idx[gap], f_idx[gap]
    return b_idx, f_idx


def _series_gap_lines(series: FloatArray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """``_gap_lines`` of the sliding windows of ``series`` (n, f), from the series itself (w times less data)."""
    nan = np.isnan(series)
    if not nan.any():
        return np.empty(0, np.intp), np.empty(0, np.intp)
    counts = np.zeros((len(series) + 1, series.shape[1]), np.intp)
    np.cumsum(nan, axis=0, out=counts[1:])
    b_idx, f_idx = np.nonzero(counts[window:] - counts[:-window])
    return b_idx, f_idx


def _fill_lines(lines: FloatArray, b_idx: np.ndarray, f_idx: np.ndarray, fallback: FloatArray | None) -> None:
    """Interpolate, in place, the lines (b, f, w) at (b_idx, f_idx), each holding at least one NaN."""
    # Every line with a gap at once, with np.interp's arithmetic: between the valid neighbours
    # p < t < q, slope · (t − p) + y[p] with slope = (y[q] − y[p]) / (q − p); the ends hold the nearest value.
    cols = lines[b_idx, f_idx]  # (m, w)
    ok = ~np.isnan(cols)
    w = cols.shape[1]
    steps = np.arange(w)
    prev = np.maximum.accumulate(np.where(ok, steps, -1), axis=1)
    nxt = np.minimum.accumulate(np.where(ok, steps, w)[:, ::-1], axis=1)[:, ::-1]
    p, q = np.clip(prev, 0, w - 1), np.clip(nxt, 0, w - 1)
    rows = np.arange(len(cols))[:, None]
    yp, yq = cols[rows, p], cols[rows, q]
    with np.errstate(invalid="ignore", divide="ignore"):
        inner = (yq - yp) / (q - p) * (steps - p) + yp
    filled = np.where(ok, cols, np.where(prev < 0, yq, np.where(nxt >= w, yp, inner)))
    empty = ~ok.any(axis=1)
    if empty.any():
        filled[empty] = 0.0 if fallback is None else np.asarray(fallback, np.float64)[f_idx[empty], None]
    lines[b_idx, f_idx] = filled


def _soft(coeffs: FloatArray, thresh: FloatArray) -> FloatArray:
    """Soft thresholding, sign(c)·max(|c| − t, 0), as c − clip(c, −t, t): the same values, three array passes
    into one new array (np.clip's Python wrapper costs more than the work on a single window)."""
    clipped = np.maximum(coeffs, -thresh)
    np.minimum(clipped, thresh, out=clipped)
    return np.subtract(coeffs, clipped, out=clipped)


@functools.lru_cache(maxsize=32)
def _wavelet(name: str) -> pywt.Wavelet:
    return pywt.Wavelet(name)


def wavelet_denoise(windows: FloatArray, wavelet: str, level: int, threshold: FloatArray, axis: int = 1) -> FloatArray:
    """Soft-threshold the detail coefficients of every window and channel along the time ``axis`` (1: windows
    (b, w, f); 2: channel-major lines (b, f, w), which pywt walks faster — the same numbers, line by line).

    Level 1 calls ``dwt``/``idwt`` directly: what ``wavedec``/``waverec`` do at level 1, the same numbers,
    without their per-call checks (the single-reading latency path)."""
    if level <= 0:
        return windows
    if axis not in (1, 2):
        raise ValueError("time axis must be 1 (b, w, f) or 2 (b, f, w)")
    n = windows.shape[axis]
    w = _wavelet(wavelet)
    t = np.asarray(threshold, dtype=np.float64).reshape((1, 1, -1) if axis == 1 else (1, -1, 1))
    if level == 1:
        approx, detail = pywt.dwt(windows, w, mode="symmetric", axis=axis)
        out = pywt.idwt(approx, _soft(detail, t), w, mode="symmetric", axis=axis)
    else:
        coeffs = pywt.wavedec(windows, w, level=level, axis=axis, mode="symmetric")
        coeffs = [coeffs[0]] + [_soft(c, t) for c in coeffs[1:]]
        out = pywt.waverec(coeffs, w, axis=axis, mode="symmetric")
    return np.asarray(out[:, :n, :] if axis == 1 else out[:, :, :n])


def _check(params: PreprocessParams) -> None:
    if not params.fitted:
        raise ValueError("preprocessing parameters are not fitted")


def _preprocess_lines(lines: FloatArray, params: PreprocessParams, gaps: tuple[np.ndarray, np.ndarray]) -> FloatArray:
    """Channel-major raw windows (b, f, w), this function's to modify, with their gap lines → model input
    (b, w, f) float32: gap filling, denoising and scaling along contiguous lines."""
    lo = np.asarray(params.scale_min)
    hi = np.asarray(params.scale_max)
    if len(gaps[0]):
        _fill_lines(lines, *gaps, fallback=(lo + hi) / 2.0)
    x = wavelet_denoise(lines, params.wavelet, params.wavelet_level, np.asarray(params.denoise_threshold), axis=2)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    # ((x - lo) / span).astype(float32) with one temporary: the float64 quotient is rounded on output.
    shifted = np.subtract(x, lo[:, None])
    out = np.empty((len(x), params.window, params.n_features), np.float32)
    np.divide(shifted, span[:, None], out=out.transpose(0, 2, 1), casting="same_kind")
    return out


def preprocess_windows(windows: FloatArray, params: PreprocessParams) -> FloatArray:
    """Raw windows (b, w, f) → model input (b, w, f) float32; ``series_windows`` for a contiguous series."""
    _check(params)
    x = np.asarray(windows, dtype=np.float64)
    if x.ndim != 3 or x.shape[1] != params.window or x.shape[2] != params.n_features:
        raise ValueError(f"expected windows of shape (b, {params.window}, {params.n_features}), got {x.shape}")
    lines = np.array(x.transpose(0, 2, 1), order="C")  # a copy: the caller's windows stay as they are
    return _preprocess_lines(lines, params, _gap_lines(lines))


def series_windows(series: FloatArray, params: PreprocessParams) -> FloatArray:
    """Every model-input window of a contiguous series (n, f), in time order: how the hub builds training data
    and how the edge scores its ring buffer — one path, so both produce the same arrays.  The windows are
    built channel-major straight from the series and its gaps found on the series."""
    _check(params)
    x = np.asarray(series, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != params.n_features:
        raise ValueError(f"expected a series of shape (n, {params.n_features}), got {x.shape}")
    w = params.window
    if len(x) < w:
        return np.empty((0, w, params.n_features), np.float32)
    lines = np.array(np.lib.stride_tricks.sliding_window_view(x, w, axis=0), order="C")  # (n-w+1, f, w), a copy
    return _preprocess_lines(lines, params, _series_gap_lines(x, w))


def fit_preprocessing(
    segments: list[FloatArray],
    features: list[str],
    window: int,
    wavelet: str = "db4",
    wavelet_level: int = 1,
) -> PreprocessParams:
    """Fit denoising thresholds and the min-max scaler on normal training segments.

    The noise level σ of each feature is the median absolute finest-scale detail coefficient / 0.6745
    (Donoho's estimator) pooled over all training windows; the threshold is the universal
    σ·sqrt(2·ln(window)).  Fitting it once, rather than per window, keeps noise bursts visible.
    """
    wins = [sliding_windows(s, window) for s in segments if len(s) >= window]
    if not wins:
        raise ValueError(f"no segment has the {window} readings one window needs")
    x = np.concatenate(wins)
    x = interpolate_gaps(x)
    n_feat = len(features)
    if wavelet_level > 0:
        max_level = pywt.dwt_max_level(window, pywt.Wavelet(wavelet).dec_len)
        if wavelet_level > max_level:
            raise ValueError(f"wavelet level {wavelet_level} too deep for window {window} (max {max_level})")
        finest = pywt.wavedec(x, wavelet, level=1, axis=1, mode="symmetric")[1]
        sigma = np.median(np.abs(finest), axis=(0, 1)) / 0.6745
        thresh = sigma * math.sqrt(2.0 * math.log(window))
        x = wavelet_denoise(x, wavelet, wavelet_level, thresh)
    else:
        thresh = np.zeros(n_feat)
    lo = x.min(axis=(0, 1))
    hi = x.max(axis=(0, 1))
    return PreprocessParams(
        features=list(features),
        window=window,
        wavelet=wavelet,
        wavelet_level=wavelet_level,
        denoise_threshold=[float(v) for v in thresh],
        scale_min=[float(v) for v in lo],
        scale_max=[float(v) for v in hi],
    )
