"""Tabular rows: missing cells imputed, heavy tails compressed, labels validated; the label ceiling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cloud_hub.evaluation.bench_models import label_ceiling
from shared.tabular import apply_tabular, fit_tabular, read_table


def test_read_impute_scale(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    p.write_text("a,b,label\n1,10,0\n,1000,1\n3,,0\n5,100000,1\n")
    t = read_table(p)
    assert t.features == ["a", "b"] and t.y is not None and t.y.tolist() == [0, 1, 0, 1]
    params = fit_tabular(t.x[:3], t.features)
    assert params.fill == [2.0, 505.0]  # training medians fill the gaps
    x = apply_tabular(t.x, params)
    assert x.shape == (4, 2, 1) and np.isfinite(x).all()
    assert x[:3].min() == 0.0 and x[:3].max() == pytest.approx(1.0)
    assert x[3, 1, 0] > 1.0  # beyond the training range stays visible (not clipped)


def test_bad_labels_are_refused(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    p.write_text("a,label\n1,0\n2,0.5\n")
    with pytest.raises(ValueError, match="label must be an integer"):
        read_table(p)
    p.write_text("a,label\n1,0\nx,1\n")
    with pytest.raises(ValueError, match="not a number"):
        read_table(p)


def test_label_ceiling_counts_conflicting_duplicates(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    p.write_text("a,label\n1,0\n1,0\n1,1\n2,1\n2,1\n")
    c = label_ceiling(p)
    # Rows "1" are labelled 0,0,1: the best any model can do is call them normal and miss one attack.
    assert c["distinct_rows"] == 2 and c["best_accuracy"] == pytest.approx(0.8)
    assert c["best_f1"] == pytest.approx(2 * 2 / (2 * 2 + 0 + 1))


def test_netflow_table_reports_f1_as_a_fraction_of_the_label_ceiling(tmp_path: Path) -> None:
    from cloud_hub.evaluation.bench_models import netflow_section

    rows = [{"model": "m", "mode": "supervised", "accuracy": 0.9, "precision": 0.9, "recall": 0.9, "f1": 0.8,
             "balanced_accuracy": 0.9, "roc_auc": 0.9, "pr_auc": 0.9, "fp": 1, "fn": 2, "ms_per_batch": 1.0,
             "f1_int8": 0.8, "quantization_f1_delta": 0.0}]
    text = netflow_section("t.csv", rows, tmp_path / "w", tmp_path, {"distinct_rows": 2, "best_f1": 0.8 / 0.9,
                                                                      "best_accuracy": 0.9})
    header, _, row = text.splitlines()[2:5]
    assert "F1 / ceiling" in header and "0.9" in row.split("|")[header.split("|").index(" F1 / ceiling ")]
