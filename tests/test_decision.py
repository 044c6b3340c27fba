"""One owner of the decision: score or likelihood, threshold, per-device scale."""

from __future__ import annotations

import numpy as np
import pytest

from shared.decision import Decision, DecisionMode, DecisionParams, quantile_threshold
from shared.schema import SchemaError


def test_quantile_threshold_is_margin_times_quantile() -> None:
    s = np.arange(101, dtype=float)  # 0..100: the 0.9 quantile is 90
    assert quantile_threshold(s, 0.9, 1.5) == pytest.approx(135.0)
    assert quantile_threshold(np.array([np.nan, 1.0, 3.0]), 1.0, 1.0) == 3.0  # NaN ignored
    with pytest.raises(ValueError, match="no finite"):
        quantile_threshold(np.array([np.nan]), 0.9, 1.0)
    with pytest.raises(ValueError, match="quantile"):
        quantile_threshold(s, 0.0, 1.0)


def test_score_mode_is_strictly_above_the_scaled_threshold() -> None:
    d = Decision(DecisionMode.SCORE, 2.0)
    assert d.flags(np.array([1.9, 2.0, 2.1, np.nan])).tolist() == [False, False, True, False]
    assert not d.is_anomalous(2.0) and d.is_anomalous(2.01)
    less_sensitive = d.scaled(1.5)
    assert less_sensitive.in_force == 3.0 and not less_sensitive.is_anomalous(2.9)


def test_likelihood_mode_is_at_or_above_and_capped_at_one() -> None:
    d = Decision(DecisionMode.LIKELIHOOD, 0.5)
    assert d.flags(np.array([9.0, 9.0]), np.array([0.49, 0.5])).tolist() == [False, True]
    assert d.is_anomalous(0.0, 0.5) and not d.is_anomalous(1e9, 0.4)  # the raw score does not matter
    assert d.scaled(4.0).in_force == 1.0 and d.scaled(4.0).is_anomalous(0.0, 1.0)
    with pytest.raises(ValueError, match="needs the likelihood"):
        d.flags(np.array([1.0]))


def test_invalid_decisions_are_refused() -> None:
    for bad in (lambda: Decision(DecisionMode.SCORE, float("nan")), lambda: Decision(DecisionMode.SCORE, 1.0, 0.0),
                lambda: Decision(DecisionMode.LIKELIHOOD, 1.5)):
        with pytest.raises(ValueError):
            bad()
    for params in ({"score_threshold": 1.0, "mode": "votes"}, {"score_threshold": float("inf")},
                   {"score_threshold": 1.0, "likelihood_threshold": 1.0}):
        with pytest.raises((ValueError, SchemaError)):
            DecisionParams.from_dict(params)


def test_from_params_follows_the_bundle() -> None:
    assert Decision.from_params(DecisionParams(score_threshold=2.0)) == Decision(DecisionMode.SCORE, 2.0)
    lik = DecisionParams(score_threshold=2.0, mode=DecisionMode.LIKELIHOOD, likelihood_threshold=0.6)
    assert Decision.from_params(lik, 1.2) == Decision(DecisionMode.LIKELIHOOD, 0.6, 1.2)
    assert DecisionParams.from_dict(lik.to_dict()) == lik


def test_the_threshold_lives_only_in_the_decision() -> None:
    """Neither the scoring nor the likelihood parameters carry a threshold or a decision mode (issue 9 §5)."""
    from dataclasses import fields

    from shared.likelihood import LikelihoodParams
    from shared.scoring import ScoringParams

    for cls in (ScoringParams, LikelihoodParams):
        names = {f.name for f in fields(cls)}
        assert not names & {"threshold", "decide_on"}, cls


def test_edge_flags_come_from_the_decision_or_a_stuck_channel() -> None:
    from edge_agent.detector import decide

    scores, lik = np.array([2.5, 1.5, 0.1]), np.array([0.2, 0.2, 0.7])
    assert decide(scores, lik, Decision(DecisionMode.SCORE, 2.0), None).tolist() == [True, False, False]
    assert decide(scores, lik, Decision(DecisionMode.LIKELIHOOD, 0.5), None).tolist() == [False, False, True]
    stuck = np.array([[False, False], [False, True], [False, False]])
    assert decide(scores, lik, Decision(DecisionMode.SCORE, 2.0), stuck).tolist() == [True, True, False]


def test_the_reason_names_a_stuck_channel_or_what_was_compared() -> None:
    assert Decision(DecisionMode.SCORE, 2.0).reason(0.3, 0.0, ["temp"]) == "stuck channel temp"
    assert Decision(DecisionMode.SCORE, 2.0, 1.5).reason(3.5) == "score 3.50 > 3.00"
    assert Decision(DecisionMode.LIKELIHOOD, 0.5).reason(0.3, 0.71) == "likelihood 0.710 >= 0.500 (score 0.30)"


def test_cli_choices_come_from_the_enums() -> None:
    from cloud_hub.cli import DECISION_CHOICE, QUANT_CHOICE
    from shared.inference import Quantization

    assert list(QUANT_CHOICE.choices) == [q.value for q in Quantization]
    assert list(DECISION_CHOICE.choices) == [d.value for d in DecisionMode]


def test_unfitted_models_raise_a_clear_error() -> None:
    from cloud_hub.config import TrainingConfig
    from cloud_hub.models import ModelError, create

    for name in ("isolation-forest", "deep-ae"):
        det = create(name, TrainingConfig())
        with pytest.raises(ModelError, match="not fitted"):
            det.predict(np.zeros((2, 1, 3), np.float32))
