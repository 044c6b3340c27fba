"""Preprocessing: each step, and parity between the hub's training windows and the edge's stream."""

from __future__ import annotations

import numpy as np
import pytest

from shared.preprocessing import (
    PreprocessParams,
    fit_preprocessing,
    interpolate_gaps,
    preprocess_windows,
    series_windows,
    sliding_windows,
    wavelet_denoise,
)
from tests.conftest import simulated_series


def test_interpolation_is_linear_inside_and_holds_at_the_ends() -> None:
    x = np.array([[np.nan, 1.0, np.nan, 3.0, np.nan]]).T[None]  # (1, 5, 1)
    out = interpolate_gaps(x)[0, :, 0]
    assert out.tolist() == [1.0, 1.0, 2.0, 3.0, 3.0]


def test_all_missing_channel_takes_the_fallback() -> None:
    x = np.full((1, 4, 2), np.nan)
    x[0, :, 0] = [1, 2, 3, 4]
    out = interpolate_gaps(x, fallback=np.array([0.0, 7.0]))
    assert out[0, :, 1].tolist() == [7.0] * 4


def test_sliding_windows_shape_and_order() -> None:
    series = np.arange(10, dtype=float).reshape(5, 2)
    w = sliding_windows(series, 3)
    assert w.shape == (3, 3, 2)
    assert w[1, :, 0].tolist() == [2.0, 4.0, 6.0]


def test_denoising_reduces_noise_but_keeps_a_spike() -> None:
    rng = np.random.default_rng(0)
    clean = np.sin(np.linspace(0, 3, 64))
    noisy = clean + rng.normal(0, 0.1, 64)
    noisy_spike = noisy.copy()
    noisy_spike[40] += 2.0
    thresh = np.array([0.1 * np.sqrt(2 * np.log(64))])
    out = wavelet_denoise(np.stack([noisy, noisy_spike])[:, :, None], "db4", 1, thresh)[:, :, 0]
    assert np.mean((out[0] - clean) ** 2) < 0.6 * np.mean((noisy - clean) ** 2)
    assert out[1, 40] - clean[40] > 1.0  # the spike survives soft thresholding


def test_fitted_scaler_maps_training_data_to_unit_range() -> None:
    _, values = simulated_series(30)
    params = fit_preprocessing([values], ["a", "b", "c", "d"], window=16)
    x = series_windows(values, params)
    assert x.dtype == np.float32
    assert x.min() == pytest.approx(0.0, abs=1e-6) and x.max() == pytest.approx(1.0, abs=1e-6)
    assert PreprocessParams.from_dict(params.to_dict()) == params


def test_wrong_window_shape_is_refused() -> None:
    _, values = simulated_series(10)
    params = fit_preprocessing([values], ["a", "b", "c", "d"], window=16)
    with pytest.raises(ValueError, match="expected windows of shape"):
        preprocess_windows(np.zeros((1, 8, 4)), params)


def test_hub_and_edge_produce_identical_windows(trained_home) -> None:  # type: ignore[no-untyped-def]
    """Readings streamed one by one (and in bursts) through the edge detector give exactly the arrays
    the hub builds for training from the same series, gaps included."""
    from edge_agent.detector import ActiveModel, StreamingDetector
    from shared import bundle as bundle_fmt
    from shared.signing import parse_public_key

    home, exported = trained_home
    bundle = bundle_fmt.load_dir(exported.bundle_dir, [parse_public_key(home.public_key())])
    model = ActiveModel.from_bundle(bundle)
    params = model.preprocessing
    ts, values = simulated_series(20, seed=5)
    values[10:14, 1] = np.nan  # a gap the edge must interpolate the same way
    values[30, :] = np.nan
    hub = series_windows(values, params)

    detector = StreamingDetector()
    detector.swap(model)
    edge = []
    readings = [(float(t), {f: (None if np.isnan(v) else float(v)) for f, v in zip(params.features, row, strict=True)})
                for t, row in zip(ts, values, strict=True)]
    i = 0
    for size in [1] * 40 + [7, 64, 3]:  # one at a time, then bursts scored in batches
        edge += [s.window for s in detector.push(readings[i : i + size])]
        i += size
    edge += [s.window for s in detector.push(readings[i:])]
    assert len(edge) == len(hub)
    assert np.array_equal(np.stack(edge), hub)


def _interp_reference(windows: np.ndarray, fallback: np.ndarray | None = None) -> np.ndarray:
    """The per-(window, channel) np.interp loop interpolate_gaps replaced."""
    x = np.array(windows, dtype=np.float64, copy=True)
    missing = np.isnan(x)
    steps = np.arange(x.shape[1])
    for b, f in zip(*np.nonzero(missing.any(axis=1)), strict=True):
        ok = ~missing[b, :, f]
        x[b, :, f] = (np.interp(steps, steps[ok], x[b, ok, f]) if ok.any()
                      else (0.0 if fallback is None else fallback[f]))
    return x


def test_vectorised_gap_filling_equals_np_interp_per_window() -> None:
    from shared.preprocessing import interpolate_gaps

    rng = np.random.default_rng(0)
    for density in (0.01, 0.2, 0.7):
        for width in (2, 5, 32):
            w = rng.normal(20, 3, size=(200, width, 4))
            w[rng.random(w.shape) < density] = np.nan
            w[3, :, 1] = np.nan  # a channel missing for the whole window
            for fallback in (None, np.array([1.0, 2.0, 3.0, 4.0])):
                assert np.array_equal(interpolate_gaps(w, fallback), _interp_reference(w, fallback))


def test_denoising_equals_pywavelets_multilevel_reference() -> None:
    """The level-1 shortcut (dwt/idwt) gives the bits wavedec/waverec give; deeper levels still use them."""
    import pywt

    def reference(x: np.ndarray, wavelet: str, level: int, t: np.ndarray) -> np.ndarray:
        coeffs = pywt.wavedec(x, wavelet, level=level, axis=1, mode="symmetric")
        tt = t.reshape(1, 1, -1)
        coeffs = [coeffs[0]] + [c - np.clip(c, -tt, tt) for c in coeffs[1:]]
        return pywt.waverec(coeffs, wavelet, axis=1, mode="symmetric")[:, : x.shape[1], :]

    rng = np.random.default_rng(3)
    t = np.array([0.3, 0.9, 0.1, 0.05])
    for batch, width, level, wavelet in ((1, 32, 1, "db4"), (300, 32, 1, "db4"), (7, 33, 1, "sym5"),
                                         (20, 64, 2, "db4"), (5, 16, 1, "haar")):
        x = rng.normal(20, 3, size=(batch, width, 4))
        assert np.array_equal(wavelet_denoise(x, wavelet, level, t), reference(x, wavelet, level, t))


def test_gap_filling_handles_infinities_and_never_writes_its_input() -> None:
    """±inf is a value, not a gap (its channel sum is NaN only when both signs meet); the input is never
    modified, and without gaps preprocessing at level 0 leaves the caller's windows alone."""
    rng = np.random.default_rng(4)
    w = rng.normal(0, 1, size=(50, 8, 3))
    w[2, 3, 0], w[2, 5, 0] = np.inf, -np.inf  # NaN sum, no gap
    w[4, 1, 1] = np.nan
    w[4, 2, 1] = np.inf
    before = w.copy()
    assert np.array_equal(interpolate_gaps(w), _interp_reference(w), equal_nan=True)
    assert np.array_equal(w, before, equal_nan=True)
    _, values = simulated_series(5)
    params = fit_preprocessing([values], ["a", "b", "c", "d"], window=16, wavelet_level=0)
    windows = sliding_windows(values, 16)
    kept = windows.copy()
    out = preprocess_windows(windows, params)
    assert np.array_equal(windows, kept) and out.dtype == np.float32
    lo, hi = np.asarray(params.scale_min), np.asarray(params.scale_max)
    assert np.array_equal(out, ((kept - lo) / np.where(hi - lo > 0, hi - lo, 1.0)).astype(np.float32))


def test_series_windows_equal_preprocessed_sliding_windows_with_gaps_and_infinities() -> None:
    """The series path (channel-major windows, gaps found on the series) gives the bits the windows path
    gives, for several window lengths, wavelets and levels."""
    rng = np.random.default_rng(9)
    for window, wavelet, level in ((32, "db4", 1), (16, "haar", 1), (64, "db4", 2), (33, "sym5", 1), (8, "db4", 0)):
        values = rng.normal(20, 3, size=(400, 4))
        params = fit_preprocessing([values], ["a", "b", "c", "d"], window=window, wavelet=wavelet,
                                   wavelet_level=level)
        values[rng.random(values.shape) < 0.03] = np.nan
        values[50 : 50 + window + 3, 2] = np.nan  # a channel missing for whole windows: the fallback
        values[120, 1], values[121, 1] = np.inf, -np.inf  # a NaN sum without a gap
        got = series_windows(values, params)
        assert got.dtype == np.float32 and got.flags.c_contiguous
        assert np.array_equal(got, preprocess_windows(sliding_windows(values, window), params), equal_nan=True)
        assert np.array_equal(series_windows(values[:window], params), got[:1])
    assert series_windows(values[:3], params).shape == (0, 8, 4)
