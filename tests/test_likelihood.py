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
        LikelihoodParams(prior_mean=0, prior_std=1, history=1)


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


class _ScalarReference:
    """The straightforward one-score-at-a-time definition (the pre-vectorisation implementation): the
    oracle the vectorised AnomalyLikelihood must match bit for bit."""

    def __init__(self, params: LikelihoodParams) -> None:
        from collections import deque

        self.p = params
        self.recent: deque[float] = deque(maxlen=params.short_window)
        self.history: deque[float] = deque()
        self.sum = self.sq = 0.0
        self.lo, self.hi = np.asarray(params.range_min, np.float64), np.asarray(params.range_max, np.float64)
        self.n = self.evicted = 0
        self.peaks: deque[tuple[int, float]] = deque()

    def one(self, score: float, reading: np.ndarray | None) -> float:
        import math

        from shared.likelihood import log_scale

        p = self.p
        v = math.log1p(max(score, 0.0)) if math.isfinite(score) else 50.0
        self.recent.append(v)
        acc = 0.0
        for r in self.recent:  # sequential, whatever sum() does on this Python version
            acc += r
        avg = acc / len(self.recent)
        n, w = len(self.history), p.prior_weight
        if n + w == 0:
            mean, std = p.prior_mean, p.prior_std
        else:
            mean = (self.sum + w * p.prior_mean) / (n + w)
            second = (self.sq + w * (p.prior_std**2 + p.prior_mean**2)) / (n + w)
            std = math.sqrt(max(second - mean * mean, 1e-12))
        z = (avg - mean) / max(std, p.prior_std * 0.1)
        lik = log_scale(1.0 - 0.5 * math.erfc(z / math.sqrt(2)))
        self.history.append(avg)
        self.sum += avg
        self.sq += avg * avg
        if len(self.history) > p.history:
            old = self.history.popleft()
            self.sum -= old
            self.sq -= old * old
            self.evicted += 1
            if self.evicted % p.history == 0:
                self.sum = math.fsum(self.history)
                self.sq = math.fsum(x * x for x in self.history)
        if p.onset_window:
            i, k = self.n, p.onset_window
            self.n += 1
            while self.peaks and self.peaks[0][0] < i - k:
                self.peaks.popleft()
            previous = self.peaks[0][1] if self.peaks else -1.0
            while self.peaks and self.peaks[-1][1] <= lik:
                self.peaks.pop()
            self.peaks.append((i, lik))
            lik = lik if lik > previous else 0.0
        if reading is not None and p.spatial_tolerance >= 0:
            r = np.asarray(reading, np.float64)
            if len(self.lo) != len(r):
                self.lo, self.hi = r.copy(), r.copy()
                return lik
            ok = np.isfinite(r)
            margin = p.spatial_tolerance * (self.hi - self.lo)
            novel = bool(np.any(ok & ((r > self.hi + margin) | (r < self.lo - margin))))
            self.lo = np.where(ok, np.minimum(self.lo, r), self.lo)
            self.hi = np.where(ok, np.maximum(self.hi, r), self.hi)
            if novel:
                return 1.0
        return lik


@pytest.mark.parametrize("params", [
    {"history": 37, "short_window": 5},
    {"history": 50, "short_window": 8, "onset_window": 20, "spatial_tolerance": 0.05},
    {"history": 1000, "short_window": 1, "prior_weight": 0, "onset_window": 3, "spatial_tolerance": 0.0,
     "range_min": [0.0, 0.0], "range_max": [1.0, 1.0]},
])
def test_vectorised_update_equals_the_scalar_definition_in_any_chunking(params: dict) -> None:  # type: ignore[type-arg]
    """Bit for bit: every chunking of the stream, several history turnovers, inf/NaN scores, NaN readings."""
    rng = np.random.default_rng(11)
    n = 1500
    scores = np.abs(rng.normal(1.0, 0.3, n))
    scores[[100, 700]] = np.inf
    scores[300] = np.nan
    scores[900:930] *= 20
    readings = rng.normal(0.5, 0.2, (n, 2))
    readings[rng.random((n, 2)) < 0.05] = np.nan
    readings[1200] = [5.0, -3.0]
    prior = fit_prior(normal_scores(300), **params)
    ref = _ScalarReference(prior)
    want = np.array([ref.one(float(s), r) for s, r in zip(scores, readings, strict=True)])
    for size in (1, 7, 64, n):
        lik = AnomalyLikelihood(prior)
        got = np.concatenate([lik.update(scores[i : i + size], readings[i : i + size]) for i in range(0, n, size)])
        assert np.array_equal(got, want), size
        assert lik._sum == ref.sum and lik._sq == ref.sq and list(lik._history) == list(ref.history)


@pytest.mark.parametrize("history,prior_weight,short_window", [(16, 100, 8), (7, 0, 3), (50, 5, 1)])
def test_single_score_path_has_the_bits_of_the_batch_path(history: int, prior_weight: int, short_window: int) -> None:
    """One score at a time takes a pure-Python path (the latency path); across evictions, the exact
    re-sum at each history turnover, an empty history without prior weight, and NaN / inf / negative
    scores, it gives the same bits as the vectorised batch path and leaves the same state."""
    params = fit_prior(normal_scores(200), history=history, prior_weight=prior_weight, short_window=short_window)
    rng = np.random.default_rng(9)
    s = np.concatenate([normal_scores(300, 5), [np.nan, np.inf, -np.inf, -3.0, 0.0, 40.0], rng.gamma(2.0, 1.0, 200)])
    whole = AnomalyLikelihood(params).update(s)
    single = AnomalyLikelihood(params)
    got = [single.update(np.array([v]))[0] for v in s]
    assert np.array_equal(whole, got)
    mixed = AnomalyLikelihood(params)
    cuts = [0, 1, 2, 40, 41, 97, 98, 300, 301, 302, len(s)]
    parts = np.concatenate([mixed.update(s[a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True)])
    assert np.array_equal(whole, parts)
    assert (single._sum, single._sq, list(single._history)) == (mixed._sum, mixed._sq, list(mixed._history))


def test_rearm_one_alarm_per_excursion_and_a_smaller_one_after_a_quiet_stretch() -> None:
    """Re-arm: after a reading reaches the threshold nothing is reported until ``rearm`` readings stayed below
    it; then even a smaller excursion alarms (onsets would hide it behind the larger one)."""
    params = fit_prior(normal_scores(300), short_window=1, rearm=40, history=5000)
    lik = AnomalyLikelihood(params)
    lik.update(normal_scores(2000, 1))
    big = lik.update(np.full(3, 400.0))  # a sustained excursion: one alarm at its start
    assert big[0] >= 0.5 and (big[1:] == 0).all()
    soon = lik.update(np.concatenate([normal_scores(20, 2), [90.0]]))  # 20 quiet readings: still disarmed
    assert soon.max() < 0.5
    later = lik.update(np.concatenate([normal_scores(60, 3), [90.0]]))  # re-armed: the smaller one alarms
    assert later[-1] >= 0.5 and later[:-1].max() < 0.5
    onsets = AnomalyLikelihood(fit_prior(normal_scores(300), short_window=1, onset_window=200, history=5000))
    onsets.update(normal_scores(2000, 1))
    onsets.update(np.full(3, 400.0))
    onsets.update(np.concatenate([normal_scores(20, 2), [90.0]]))
    assert onsets.update(np.concatenate([normal_scores(60, 3), [90.0]]))[-1] == 0.0


def test_deviation_catches_a_level_the_model_scores_as_normal() -> None:
    """The model-free deviation likelihood: silent while it primes on the stream, then ℓ ≥ 0.5 on a reading far
    from the recent median although the model's score stays normal; without it the same stream is quiet."""
    rng = np.random.default_rng(7)
    x = rng.normal(10.0, 1.0, (900, 2))
    x[800, 1] = 30.0  # one channel jumps; the model's score does not move
    s = normal_scores(900, 8)
    on = AnomalyLikelihood(fit_prior(normal_scores(300), deviation_window=50, deviation_warmup=200))
    out = on.update(s, x)
    off = AnomalyLikelihood(fit_prior(normal_scores(300))).update(s, x)
    assert out[:250].max() == off[:250].max()  # 50 readings of history + 200 of warm-up: the model's ℓ only
    assert out[800] >= 0.5 > off[800]
    assert np.quantile(out[250:800], 0.99) < 0.5


def test_rearm_and_deviation_are_batch_independent_and_carry_over_a_model_swap() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (1500, 2))
    x[1200, 0] += 15
    s = normal_scores(1500, 4)
    s[900:905] = 40.0
    params = fit_prior(normal_scores(300), deviation_window=40, deviation_warmup=100, rearm=30)
    whole = AnomalyLikelihood(params).update(s, x)
    chunked, i = AnomalyLikelihood(params), 0
    parts = []
    for k in [1, 2, 39, 40, 41, 100, 7, 1, 500, 1500]:
        parts.append(chunked.update(s[i : i + k], x[i : i + k]))
        i += k
    single = AnomalyLikelihood(params)
    assert np.array_equal(whole, np.concatenate(parts))
    assert np.array_equal(whole, [single.update_one(float(s[j]), x[j]) for j in range(len(s))])
    assert whole[900] >= 0.5 and whole[1200] >= 0.5
    # A new model on the same stream: its score history starts over, the readings' deviation state does not.
    first = AnomalyLikelihood(params)
    first.update(s[:1100], x[:1100])
    swapped = first.continued(fit_prior(normal_scores(300, 9), deviation_window=40, deviation_warmup=100, rearm=30))
    fresh = AnomalyLikelihood(fit_prior(normal_scores(300, 9), deviation_window=40, deviation_warmup=100, rearm=30))
    assert swapped.update(s[1100:], x[1100:])[100] >= 0.5  # primed: reading 1200 is judged at once
    assert fresh.update(s[1100:], x[1100:])[100] < 0.5  # a fresh stream is still warming up


def test_rearm_and_deviation_params_validate() -> None:
    for bad in ({"rearm": -1}, {"deviation_window": 1}, {"deviation_window": -2}, {"deviation_warmup": 1}):
        with pytest.raises(ValueError):
            LikelihoodParams(prior_mean=0, prior_std=1, **bad)


def test_seasonal_scores_against_the_same_slot_only_hand_computed() -> None:
    """Period 4 s in 2 slots ([0, 2) and [2, 4) mod 4): a reading is compared with its own slot's earlier
    readings — median 11, MAD 1 of {10, 12} — once the slot was seen in 2 earlier periods, and joins the
    slot after being judged."""
    from shared.likelihood import _Seasonal

    seas = _Seasonal(LikelihoodParams(prior_mean=0, prior_std=1, seasonal_period=4, seasonal_slots=2,
                                      seasonal_depth=3, seasonal_min=2))
    t = np.array([0.0, 2.0, 4.5, 6.0, 8.0, 10.0, 12.0, 13.9])
    x = np.array([[10.0], [100.0], [12.0], [104.0], [14.0], [102.0], [11.0], [11.0]])
    got = seas.scores(x, t)
    assert np.isnan(got[:4]).all()  # each slot seen in < 2 earlier periods until t = 8 (period 2)
    assert got[4] == pytest.approx(3 / (1 + 1e-3 * 11 + 1e-9))  # 14 vs slot 0 {10, 12}
    assert got[5] == pytest.approx(0 / (2 + 1e-3 * 102 + 1e-9))  # 102 vs slot 1 {100, 104}: median 102, MAD 2
    assert got[6] == pytest.approx(1 / (2 + 1e-3 * 12 + 1e-9))  # 11 vs {10, 12, 14}: median 12, MAD 2
    # t 13.9 (mod 4 = 1.9: slot 0); depth 3, so 10 has fallen out: {12, 14, 11}, median 12, MAD 1
    assert got[7] == pytest.approx(1 / (1 + 1e-3 * 12 + 1e-9))
    assert seas.kept(0)[:, 0].tolist() == [14.0, 11.0, 11.0]


def test_seasonal_slot_is_hour_of_day_by_weekday() -> None:
    from shared.likelihood import _Seasonal

    seas = _Seasonal(LikelihoodParams(prior_mean=0, prior_std=1, seasonal_period=604800, seasonal_slots=168))
    thursday_midnight = 0.0  # 1970-01-01 was a Thursday
    assert seas.slot(thursday_midnight) == 0
    assert seas.slot(thursday_midnight + 3600 * 5 + 59) == 5
    assert seas.slot(thursday_midnight + 86400 * 7 + 3600 * 5) == 5  # a week later: the same slot
    assert seas.slot(thursday_midnight + 86400 + 3600 * 5) == 29  # Friday 05:00


def test_seasonal_context_catches_a_missing_daily_peak_the_range_allows() -> None:
    """A daily cycle whose peak fails to come one day: every value stays inside the range seen, the model's
    score is normal, the recent-median deviation sees a smooth curve — only the time-of-day profile objects.
    Silent until the slots have seen enough days; batch-independent; off without timestamps."""
    rng = np.random.default_rng(5)
    step = 1800.0  # half-hourly readings, 48 a day, 20 days
    t = np.arange(48 * 20) * step
    hour = (t % 86400) / 3600
    x = (10 + 8 * np.exp(-((hour - 14) ** 2) / 4) + rng.normal(0, 0.3, len(t)))[:, None]
    day17 = (t >= 17 * 86400) & (t < 18 * 86400)
    x[day17, 0] = 10 + rng.normal(0, 0.3, int(day17.sum()))  # no peak on day 17
    s = normal_scores(len(t), 2)
    params = fit_prior(normal_scores(300), short_window=1, seasonal_period=86400, seasonal_slots=24,
                       seasonal_depth=16, seasonal_min=3, deviation_warmup=100)
    out = AnomalyLikelihood(params).update(s, x, t)
    off = AnomalyLikelihood(fit_prior(normal_scores(300), short_window=1)).update(s, x, t)
    no_ts = AnomalyLikelihood(params).update(s, x)
    assert np.array_equal(no_ts, off)
    peak17 = day17 & (hour >= 12) & (hour < 16)
    assert out[peak17].max() >= 0.5 > off[peak17].max()
    assert out[: 48 * 3].max() == off[: 48 * 3].max()  # a slot speaks once seen on 3 earlier days
    chunked = AnomalyLikelihood(params)
    parts = [chunked.update(s[i : i + 77], x[i : i + 77], t[i : i + 77]) for i in range(0, len(t), 77)]
    assert np.array_equal(out, np.concatenate(parts))
    single = AnomalyLikelihood(params)
    assert np.array_equal(out, [single.update_one(float(s[j]), x[j], float(t[j])) for j in range(len(t))])


def test_seasonal_params_validate() -> None:
    for bad in ({"seasonal_period": -1}, {"seasonal_period": 86400, "seasonal_slots": 0},
                {"seasonal_period": 86400, "seasonal_min": 0}, {"seasonal_period": 86400, "seasonal_depth": 1},
                {"seasonal_period": 86400, "seasonal_smoothing": 0}):
        with pytest.raises(ValueError):
            LikelihoodParams(prior_mean=0, prior_std=1, **bad)


def test_rearm_max_bounds_the_silence_of_a_stream_that_never_stays_quiet() -> None:
    """re-arm 3, rearm_max 5: an alarm at 0; the crossings at 1–6 keep it disarmed, but the one 5 readings after
    the reported alarm is reported; after 3 quiet readings the next crossing is reported as before."""
    from shared.likelihood import _Rearm

    lik = np.array([0.9] * 7 + [0.0] * 3 + [0.9])
    capped = LikelihoodParams(prior_mean=0, prior_std=1, rearm=3, rearm_max=5)
    plain = LikelihoodParams(prior_mean=0, prior_std=1, rearm=3)
    assert _Rearm(capped).apply(lik).tolist() == [0.9, 0, 0, 0, 0, 0.9, 0, 0, 0, 0, 0.9]
    assert _Rearm(plain).apply(lik).tolist() == [0.9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0.9]
    chunked = _Rearm(capped)
    parts = [chunked.apply(lik[i : i + k]) for i, k in ((0, 2), (2, 1), (3, 4), (7, 4))]
    assert np.concatenate(parts).tolist() == [0.9, 0, 0, 0, 0, 0.9, 0, 0, 0, 0, 0.9]
    with pytest.raises(ValueError):
        LikelihoodParams(prior_mean=0, prior_std=1, rearm_max=-1)


def test_seasonal_smoothing_profiles_a_running_median_so_a_lone_spike_is_ignored() -> None:
    """smoothing 3: each reading is replaced by the median of itself and the 2 before it (fewer at the start),
    the same however the rows are batched."""
    from shared.likelihood import _Seasonal

    params = LikelihoodParams(prior_mean=0, prior_std=1, seasonal_period=2, seasonal_slots=1, seasonal_depth=8,
                              seasonal_min=1, seasonal_smoothing=3)
    x = np.array([[1.0], [3.0], [1.0], [50.0], [1.0], [1.0], [2.0]])
    t = np.arange(len(x)) * 2.0  # one slot, one period per reading
    whole = _Seasonal(params)
    got = whole.scores(x, t)
    # smoothed: 1, median(1,3)=2, 1, median(3,1,50)=3, median(1,50,1)=1, 1, median(1,1,2)=1
    assert whole.kept(0)[:, 0].tolist() == [1.0, 2.0, 1.0, 3.0, 1.0, 1.0, 1.0]
    chunked = _Seasonal(params)
    parts = [chunked.scores(x[i : i + k], t[i : i + k]) for i, k in ((0, 1), (1, 3), (4, 3))]
    assert np.array_equal(np.concatenate(parts), got, equal_nan=True)


def test_keys_newer_than_format_2_are_written_only_when_used() -> None:
    """A bundle that does not use re-arm caps or the seasonal context still loads on an agent that predates
    them (agents refuse unknown keys); one that does carries them and round-trips."""
    before = {"prior_mean", "prior_std", "prior_weight", "history", "short_window", "spatial_tolerance",
              "range_min", "range_max", "onset_window", "rearm", "rearm_level", "deviation_window",
              "deviation_warmup"}  # the keys of the release before the seasonal context
    plain = LikelihoodParams(prior_mean=1.0, prior_std=0.5, rearm=500, deviation_window=144)
    assert set(plain.to_dict()) == before
    assert LikelihoodParams.from_dict(plain.to_dict()) == plain
    used = LikelihoodParams(prior_mean=1.0, prior_std=0.5, rearm=500, rearm_max=2000, seasonal_period=86400,
                            seasonal_slots=24)
    assert {"rearm_max", "seasonal_period", "seasonal_slots"} <= set(used.to_dict())
    assert LikelihoodParams.from_dict(used.to_dict()) == used
