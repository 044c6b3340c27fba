"""Streaming likelihood: bounded, causal, identical in batches, and high after a jump."""

from __future__ import annotations

import numpy as np
import pytest

from shared.likelihood import AnomalyLikelihood, LikelihoodParams, fit_prior
from shared.scoring import attribution


def normal_scores(n: int, seed: int = 0) -> np.ndarray:
    return np.abs(np.random.default_rng(seed).normal(1.0, 0.2, n))


def test_bounded_and_high_after_a_jump() -> None:
    params = fit_prior(normal_scores(500), history=500)
    lik = AnomalyLikelihood(params)
    normal = lik.update(normal_scores(800, seed=1))
    jump = lik.update(np.full(20, 8.0))
    assert ((normal >= 0) & (normal <= 1)).all() and ((jump >= 0) & (jump <= 1)).all()
    assert np.quantile(normal, 0.99) < 0.5 <= jump.max()


def test_causal_and_batch_independent() -> None:
    params = fit_prior(normal_scores(300))
    s = np.concatenate([normal_scores(400, 2), [9.0, 9.0], normal_scores(100, 3)])
    whole = AnomalyLikelihood(params).update(s)
    one_by_one = AnomalyLikelihood(params)
    assert np.array_equal(whole, [one_by_one.update_one(float(v)) for v in s])
    prefix = AnomalyLikelihood(params).update(s[:401])  # the future does not change the past
    assert np.array_equal(prefix, whole[:401])


def test_adapts_to_a_new_normal() -> None:
    """A lasting level change stops looking anomalous once the history has absorbed it."""
    lik = AnomalyLikelihood(fit_prior(normal_scores(300), history=300))
    lik.update(normal_scores(300, 4))
    shifted = lik.update(3 * normal_scores(1500, 5))
    assert shifted[:20].max() > 0.5 and np.quantile(shifted[-300:], 0.9) < 0.5


def test_params_validate() -> None:
    with pytest.raises(ValueError):
        LikelihoodParams(prior_mean=0, prior_std=0)
    with pytest.raises(ValueError):
        LikelihoodParams(prior_mean=0, prior_std=1, decide_on="votes")


def test_attribution_names_the_channels_that_drove_the_score() -> None:
    shares = attribution(np.array([0.5, 3.0, 1.5, 0.0]), ["a", "b", "c", "d"], top=2)
    assert list(shares) == ["b", "c"] and shares["b"] == pytest.approx(0.6)
    assert attribution(np.zeros(3), ["a", "b", "c"], 2) == {}


def test_range_novelty_and_onsets() -> None:
    params = fit_prior(normal_scores(300), spatial_tolerance=0.05, range_min=[0.0], range_max=[10.0], onset_window=50)
    lik = AnomalyLikelihood(params)
    quiet = lik.update(np.ones(100), np.full((100, 1), 5.0))
    assert quiet.max() < 0.5
    # A reading beyond the training range by more than 5 % of it: likelihood 1 at once, even with a normal score.
    out = lik.update(np.ones(3), np.array([[10.2], [11.0], [11.1]]))
    assert out[0] < 1.0 and out[1] == 1.0
    assert out[2] < 1.0  # within 5 % of the range that now includes 11.0
    # Onsets: a lasting jump in the raw score is reported where it starts, then not again for 50 readings.
    jump = lik.update(np.full(60, 50.0), np.full((60, 1), 5.0))
    assert jump[0] > 0.5 and (jump[1:50] == 0.0).all()


def test_running_sums_do_not_drift() -> None:
    """Incremental sums are re-summed once per history turnover: after many turnovers they equal a
    fresh sum over the history exactly as fsum computes it."""
    lik = AnomalyLikelihood(fit_prior(normal_scores(100), history=50))
    lik.update(np.concatenate([normal_scores(1000, 6) * 1e6, normal_scores(1000, 7)]))
    assert lik._sum == pytest.approx(sum(lik._history), rel=1e-12)
    assert lik._sq == pytest.approx(sum(v * v for v in lik._history), rel=1e-12)
