"""NAB scoring as published: null 0, perfect 100, early beats late, false positives cost."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cloud_hub.evaluation.nab_scoring import (
    MAX_TP,
    PROFILES_DEFAULT,
    FileScorer,
    probationary_length,
    scaled_sigmoid,
    score_corpus,
    window_indices,
)

STD = PROFILES_DEFAULT["standard"]


def test_scaled_sigmoid_and_probation() -> None:
    assert scaled_sigmoid(-1.0) == pytest.approx(0.98661, abs=1e-5) == MAX_TP
    assert scaled_sigmoid(0.0) == 0.0 and scaled_sigmoid(3.5) == -1.0
    assert probationary_length(1000) == 150 and probationary_length(10_000) == 750


def test_file_score_parts() -> None:
    fs = FileScorer.build(1000, [(400, 499), (800, 899)])
    none = np.zeros(1000, bool)
    assert fs.score(none, STD)["score"] == -2.0
    perfect = fs.perfect()
    assert fs.score(perfect, STD) == {"score": pytest.approx(2.0), "tp": 2, "fn": 0, "fp": 0}
    early, late = none.copy(), none.copy()
    early[400], late[490] = True, True
    assert fs.score(early, STD)["score"] > fs.score(late, STD)["score"] > -2.0
    fp_before = none.copy()
    fp_before[300] = True  # before any window: full FP cost
    assert fs.score(fp_before, STD)["score"] == pytest.approx(-2.0 - 0.11)
    fp_after = none.copy()
    fp_after[501] = True  # just past a window: almost free
    assert -2.0 - 0.11 < fs.score(fp_after, STD)["score"] < -2.0
    probation = none.copy()
    probation[:150] = True  # the probationary period is not scored
    assert fs.score(probation, STD)["score"] == -2.0


def test_corpus_normalisation_and_threshold_sweep() -> None:
    a = FileScorer.build(1000, [(400, 499)])
    b = FileScorer.build(2000, [(1500, 1599)])
    sa, sb = np.zeros(1000), np.zeros(2000)
    sa[400], sb[1500] = 0.9, 0.8
    r = score_corpus([(a, sa), (b, sb)], {"standard": STD})
    assert r.scores["standard"] == pytest.approx(100.0) and r.thresholds["standard"] <= 0.8
    null = score_corpus([(a, np.zeros(1000)), (b, np.zeros(2000))], {"standard": STD}, threshold=0.5)
    assert null.scores["standard"] == pytest.approx(0.0)
    own = score_corpus([(a, sa), (b, sb)], {"standard": STD}, decisions=[sa > 0.85, sb > 0.85])
    assert own.scores["standard"] == pytest.approx(50.0)


def test_window_timestamps_map_to_rows() -> None:
    from shared.csvdata import parse_timestamp

    ts = np.array([parse_timestamp(f"2024-01-01 00:{m:02d}:00") for m in range(60)])
    assert window_indices(ts, [["2024-01-01 00:10:00.000000", "2024-01-01 00:19:00.000000"]]) == [(10, 19)]


NAB = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "nab"


@pytest.mark.skipif(not NAB.exists(), reason="NAB corpus not present (../shared/datasets/nab)")
def test_real_corpus_null_and_perfect() -> None:
    from cloud_hub.evaluation.nab import _read_raw, data_files

    windows = json.loads((NAB / "labels" / "combined_windows.json").read_text())
    files = data_files(NAB)
    assert len(files) == 58
    from shared.csvdata import parse_timestamp

    scored = []
    for name in files[:12]:
        raw_ts, _ = _read_raw(NAB / "data" / name)
        ts = np.array([parse_timestamp(t) for t in raw_ts])
        wins = window_indices(ts, windows[name])
        assert len(wins) == len(windows[name])  # every labelled window lands on rows
        fs = FileScorer.build(len(ts), wins)
        scored.append((fs, fs.perfect().astype(float)))
    assert score_corpus(scored, {"standard": STD}).scores["standard"] == pytest.approx(100.0)
