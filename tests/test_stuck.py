"""Stuck sensors: variance collapse against each channel's own normal variability, learned on the hub,
shipped in the bundle and checked on the edge (with the stuck channel in the attribution)."""

from __future__ import annotations

import numpy as np
import pytest

from shared.preprocessing import sliding_windows
from shared.stuck import StuckParams, fit_stuck, stuck_channels, stuck_in_series
from tests.conftest import simulated_series


def test_learned_from_normal_data_flags_only_the_frozen_channel() -> None:
    _, train = simulated_series(60, seed=1)
    params = fit_stuck([train], 16)
    assert all(v > 0 for v in params.min_std)
    _, fresh = simulated_series(60, seed=2)
    assert not stuck_channels(sliding_windows(fresh, 16), params).any()  # no false alarm on normal data
    frozen = fresh.copy()
    frozen[500:700, 2] = frozen[500, 2]  # channel 2 holds its value for 200 readings
    flags = stuck_channels(sliding_windows(frozen, 16), params)  # window i ends at reading i + 15
    assert flags[:, [0, 1, 3]].sum() == 0
    assert flags[500 - 15 + 15 : 700 - 15, 2].all()  # every window wholly inside the frozen span
    assert not flags[: 500 - 15, 2].any() and not flags[700:, 2].any()


def test_channels_flat_in_training_are_never_checked_and_gaps_are_ignored() -> None:
    _, train = simulated_series(30, seed=3)
    train[:, 1] = 7.0  # a setpoint
    params = fit_stuck([train], 16)
    assert params.min_std[1] == 0.0
    x = train.copy()
    assert not stuck_channels(sliding_windows(x, 16), params)[:, 1].any()
    gappy = np.full((16, 4), np.nan)
    gappy[:4] = 1.0  # under half the readings present: not judged
    assert not stuck_channels(gappy[None], params).any()


def test_params_are_validated() -> None:
    with pytest.raises(ValueError):
        StuckParams(window=1, min_std=[1.0])
    with pytest.raises(ValueError):
        StuckParams(window=8, min_std=[-1.0])
    assert StuckParams.from_dict(StuckParams(window=8, min_std=[0.5]).to_dict()).min_std == [0.5]


def test_bundle_carries_the_check_and_replay_reports_the_channel(trained_home) -> None:  # type: ignore[no-untyped-def]
    from edge_agent.replay import load_bundle, replay
    from shared.csvdata import Series
    from tests.conftest import FEATURES

    home, exported = trained_home
    bundle = load_bundle(exported.archive, [home.public_key()])
    assert bundle.manifest.stuck is not None and bundle.manifest.stuck.window == 16
    ts, values = simulated_series(40, seed=7)
    values[400:600, 3] = values[400, 3]  # vibration freezes for 10 s
    r = replay(bundle, Series(ts, list(FEATURES), values))
    inside = slice(400 + 15, 600)
    assert r.anomalous[inside.start]  # the window where the channel became stuck alarms
    assert {r.top_feature[i] for i in range(inside.start, inside.stop)} == {"vibration"}  # every stuck window
    # Fed in small pushes, the agent decides the same: the onset state carries between batches.
    from edge_agent.replay import Replayer

    small = Replayer(bundle, Series(ts, list(FEATURES), values))
    for end in range(0, len(ts) + 37, 37):
        small.advance(end)
    assert np.array_equal(small.result().anomalous, r.anomalous)


def test_a_stuck_episode_alarms_once_even_across_pushes() -> None:
    from shared.stuck import stuck_onsets

    s = np.array([[0, 0], [1, 0], [1, 1], [1, 1], [0, 1], [1, 0]], bool)
    assert stuck_onsets(s).astype(int).tolist() == [[0, 0], [1, 0], [0, 1], [0, 0], [0, 0], [1, 0]]
    # Split in two batches: the second knows the first's last window, so nothing re-fires.
    assert stuck_onsets(s[3:], s[2]).astype(int).tolist() == [[0, 0], [0, 0], [1, 0]]
    assert stuck_onsets(np.zeros((0, 2), bool)).shape == (0, 2)


def test_rolling_std_fast_path_equals_the_nan_aware_path() -> None:
    """Complete windows take numpy's std; the same windows in a batch with a gap elsewhere take the
    NaN-aware formula: identical values."""
    from shared.stuck import _rolling_std

    rng = np.random.default_rng(5)
    clean = rng.normal(20.0, 3.0, size=(200, 16, 4))
    gappy = np.concatenate([clean, clean[:1]])
    gappy[-1, 3, 2] = np.nan
    assert np.array_equal(_rolling_std(clean), _rolling_std(gappy)[:-1])
    assert np.isfinite(_rolling_std(gappy)[-1]).all()


def test_rolling_std_of_a_mixed_batch_equals_the_nan_aware_formula_per_window() -> None:
    from shared.stuck import _rolling_std

    rng = np.random.default_rng(6)
    w = rng.normal(20.0, 3.0, size=(300, 16, 4))
    w[rng.random(w.shape) < 0.02] = np.nan
    w[7, :10, 0] = np.nan  # under half present: NaN
    present = np.isfinite(w)
    n = present.sum(axis=1)
    mean = np.where(present, w, 0.0).sum(axis=1) / np.maximum(n, 1)
    var = np.where(present, (w - mean[:, None, :]) ** 2, 0.0).sum(axis=1) / np.maximum(n, 1)
    want = np.where(n * 2 >= w.shape[1], np.sqrt(var), np.nan)
    assert np.array_equal(_rolling_std(w), want, equal_nan=True) and np.isnan(want[7, 0])


def test_rolling_std_equals_numpy_std_bit_for_bit() -> None:
    """The fast path replays numpy's std pass for pass: the same bits, on contiguous windows and on the
    newest-k slice the stuck check takes."""
    from shared.stuck import _rolling_std

    rng = np.random.default_rng(8)
    w = rng.normal(20.0, 3.0, size=(257, 32, 4)) * rng.choice([1e-6, 1.0, 1e6], size=(257, 1, 4))
    w[5, :, 1] = 7.25  # frozen: exactly 0
    for x in (w, w[:, -20:, :], w[:1]):
        assert np.array_equal(_rolling_std(x), x.std(axis=1))
    assert _rolling_std(w)[5, 1] == 0.0


def test_series_check_with_the_range_prefilter_decides_as_the_exact_check() -> None:
    """stuck_in_series skips the exact std where the rolling range proves a channel is not stuck: the same
    decisions as stuck_channels on every window, with gaps, infinities, frozen stretches, channels whose
    spread sits right at the bound (two extremes, the rest at their midpoint) and huge offsets."""
    rng = np.random.default_rng(11)
    n, f = 900, 5
    min_std = [0.1, 0.3, 0.0, 0.05, 0.2]
    for k, window in ((32, 32), (20, 32), (2, 8), (7, 64)):
        params = StuckParams(window=k, min_std=min_std, ratio=0.05)
        limit = np.asarray(min_std) * 0.05
        x = rng.normal(0.0, 1.0, size=(n, f)) * limit * rng.choice([0.5, 2.0, 50.0], size=(n, 1))
        x += rng.choice([0.0, 20.0, 1e6], size=(1, f))
        x[100:100 + 2 * k, 0] = 3.5  # frozen
        x[200:200 + 3 * k, 1] = np.nan  # a gap longer than the window
        x[300:300 + k, 3] = 1.0  # at the bound: std = range / sqrt(2k) exactly when the range is limit·sqrt(2k)
        x[300, 3], x[300 + k - 1, 3] = 1.0 - limit[3] * np.sqrt(2 * k) / 2, 1.0 + limit[3] * np.sqrt(2 * k) / 2
        x[400:400 + k, 4] = 5.0
        x[405, 4] = np.inf
        x[rng.random((n, f)) < 0.02] = np.nan
        want = stuck_channels(sliding_windows(x, window), params)
        got = stuck_in_series(x, window, params)
        assert got.shape == want.shape and np.array_equal(got, want)
        assert want[:, 0].any() and not want[:, 2].any()
    assert stuck_in_series(np.zeros((3, f)), 8, StuckParams(window=2, min_std=min_std)).shape == (0, f)
