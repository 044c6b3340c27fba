"""How int8-vs-Keras agreement is measured: each model flagged against its own threshold, the held-out
windows on their own, and the disagreements that are more than threshold noise."""

from __future__ import annotations

import numpy as np
import pytest

from cloud_hub.demo.run import agreement_line
from cloud_hub.export import BAND, agreement
from cloud_hub.models.calibration import perturbed


def test_agreement_flags_each_model_against_its_own_threshold() -> None:
    # 4 held-out windows then 4 perturbed ones.  Keras threshold 10, int8 threshold 20 (its scores run 2x).
    keras = np.array([1.0, 2.0, 3.0, 4.0, 9.0, 12.0, 10.2, 30.0])
    int8 = np.array([2.0, 4.0, 6.0, 8.0, 22.0, 26.0, 19.9, 60.0])
    a = agreement(keras, int8, keras_threshold=10.0, tfl_threshold=20.0, heldout=4)
    # Flags: keras F F F F F T T T, int8 F F F F T T F T -> windows 4 and 6 disagree.
    assert a.windows == 8 and a.flag_agreement == pytest.approx(6 / 8)
    assert a.flag_agreement_heldout == 1.0
    # Window 6 sits within 5 % of both thresholds (10.2 / 10, 19.9 / 20): threshold noise.  Window 4 is
    # 10 % under Keras's and 10 % over int8's: a real disagreement, kept.
    assert a.band == BAND == 0.05
    assert a.flag_agreement_outside_band == pytest.approx(6 / 7)
    assert a.mean_abs_rel_diff == pytest.approx(np.mean(np.abs(int8 - keras) / keras))
    assert a.score_pearson == pytest.approx(np.corrcoef(keras, int8)[0, 1])


def test_a_score_equal_to_the_threshold_is_not_flagged_like_the_agent() -> None:
    a = agreement(np.array([1.0, 5.0]), np.array([1.0, 5.0]), 5.0, 4.9, heldout=1)
    assert a.flag_agreement == 0.5  # 5.0 > 5.0 is False for Keras, 5.0 > 4.9 True for int8


def test_the_probe_is_the_windows_then_a_perturbed_copy_on_one_channel() -> None:
    x = np.random.default_rng(1).uniform(0, 1, (50, 16, 3)).astype(np.float32)
    p = perturbed(x, seed=3)
    assert p.shape == (100, 16, 3)
    np.testing.assert_array_equal(p[:50], x)
    changed = np.abs(p[50:] - x) > 1e-6  # (50, 16, 3)
    assert (changed.any(axis=(1, 2))).all()  # every copy is perturbed ...
    assert (changed.any(axis=1).sum(axis=1) == 1).all()  # ... on exactly one channel ...
    assert changed[:, -1, :].any(axis=1).all() and not changed[:, 0, :].any()  # ... over its last readings


def test_demo_summary_line() -> None:
    assert agreement_line({}) == "not measured"
    line = agreement_line({"windows": 8, "score_pearson": 0.99, "flag_agreement": 0.995, "mean_abs_rel_diff": 0.1,
                           "flag_agreement_heldout": 1.0, "band": 0.05, "flag_agreement_outside_band": 1.0})
    assert "flags 0.9950" in line and "held-out only 1.0000" in line and "±5%" in line
    old = agreement_line({"windows": 8, "score_pearson": 0.99, "flag_agreement": 0.9, "mean_abs_rel_diff": 0.1})
    assert old.startswith("pearson 0.9900, flags 0.9000") and "held-out" not in old
