"""Learning from the streamed past: the retrain policy, the flagged-rows rule, and a model swap mid-replay
that keeps the stream's state (range seen, recent alarms) while re-priming the score history."""

from __future__ import annotations

import numpy as np
import pytest

from cloud_hub.data import TrainingData, near_flags, unflagged_segments
from cloud_hub.retrain_policy import RetrainPolicy
from shared.likelihood import AnomalyLikelihood, fit_prior
from tests.conftest import FEATURES, simulated_series


def test_near_flags_marks_one_window_either_side_and_survives_short_inputs() -> None:
    f = np.zeros(12, bool)
    f[5] = True
    assert near_flags(f, 2).nonzero()[0].tolist() == [3, 4, 5, 6, 7]
    assert near_flags(np.array([True, False, False]), 5).tolist() == [True, True, True]  # shorter than 2w+1
    assert near_flags(np.zeros(0, bool), 3).shape == (0,)
    v = np.arange(12.0)[:, None]
    segs = unflagged_segments(v, near_flags(f, 2))
    assert [s[:, 0].tolist() for s in segs] == [[0, 1, 2], [8, 9, 10, 11]]


def test_policy_points_due_and_validation() -> None:
    p = RetrainPolicy(every=1000, max_rows=3000)
    assert p.points(600, 4032) == [1600, 2600, 3600]
    assert RetrainPolicy().points(600, 4032) == [] and not RetrainPolicy().due(10**9)
    assert p.due(1000) and not p.due(999)
    with pytest.raises(ValueError):
        RetrainPolicy(every=-1)
    with pytest.raises(ValueError):
        RetrainPolicy(max_rows=1)


def test_newest_keeps_the_latest_rows_across_segments() -> None:
    segs = [np.arange(0, 50.0)[:, None], np.arange(100, 130.0)[:, None]]
    d = RetrainPolicy(max_rows=40).newest(TrainingData(["v"], segs, "t", 80))
    assert d.rows == 40 and d.segments[0][0, 0] == 40 and d.segments[-1][-1, 0] == 129


def test_stream_data_leaves_out_what_the_agent_flagged() -> None:
    values = np.arange(1000.0)[:, None]
    flags = np.zeros(1000, bool)
    flags[900] = True
    d = RetrainPolicy(every=100, max_rows=300).stream_data(["v"], values, flags, window=10, source="s")
    kept = np.concatenate(d.segments)[:, 0]
    assert d.rows == 300 and not np.isin(np.arange(890, 911), kept).any() and kept.max() == 999
    d_all = RetrainPolicy(every=100, max_rows=300, exclude_flagged=False).stream_data(["v"], values, flags, 10, "s")
    assert np.concatenate(d_all.segments)[:, 0].tolist() == list(range(700, 1000))


def test_continued_likelihood_keeps_the_range_and_recent_alarms_of_the_stream() -> None:
    rng = np.random.default_rng(0)
    params = fit_prior(np.abs(rng.normal(1, 0.2, 300)), spatial_tolerance=0.05, range_min=[0.0],
                       range_max=[10.0], onset_window=50)
    old = AnomalyLikelihood(params)
    old.update(np.ones(100), np.full((100, 1), 5.0))
    old.update(np.ones(1), np.array([[20.0]]))  # the stream has now seen 20
    assert old.update(np.full(1, 50.0), np.array([[5.0]]))[0] > 0.5  # an alarm the new model must not repeat
    # A retrained model whose training range is narrower ([4, 6]).
    narrow = fit_prior(np.abs(rng.normal(1, 0.2, 300)), spatial_tolerance=0.05, range_min=[4.0],
                       range_max=[6.0], onset_window=50)
    fresh, cont = AnomalyLikelihood(narrow), old.continued(narrow)
    probe = np.array([[15.0]])  # within what the stream has seen, outside the new training range
    assert fresh.update(np.ones(1), probe)[0] == 1.0 and cont.update(np.ones(1), probe)[0] < 1.0
    # The excursion reported just before the swap is not reported again by the new model.
    assert cont.update(np.full(1, 50.0), np.array([[5.0]]))[0] == 0.0
    assert AnomalyLikelihood(narrow).update(np.full(1, 50.0), np.array([[5.0]]))[0] > 0.5


def test_replay_swaps_a_retrained_bundle_mid_stream(trained_home) -> None:  # type: ignore[no-untyped-def]
    from edge_agent.replay import Replayer, load_bundle, replay
    from shared.csvdata import Series

    home, exported = trained_home
    bundle = load_bundle(exported.archive, [home.public_key()])
    ts, values = simulated_series(40, seed=7)
    series = Series(ts, list(FEATURES), values)
    whole = replay(bundle, series)
    r = Replayer(bundle, series)
    r.advance(300)
    r.advance(300)  # idempotent
    r.swap(bundle)  # an update to a model on the same features, mid-stream
    r.advance(len(ts))
    got = r.result()
    # Raw scores do not depend on the likelihood state: identical before and after the swap.
    np.testing.assert_array_equal(np.isnan(got.score), np.isnan(whole.score))
    np.testing.assert_allclose(got.score[~np.isnan(got.score)], whole.score[~np.isnan(whole.score)])
    # The likelihood is identical up to the swap and re-primed from the bundle's prior after it.
    np.testing.assert_array_equal(got.likelihood[:300], whole.likelihood[:300])
