"""NAB scoring as published (numenta/NAB nab/sweeper.py + runner.normalize), from hand-computed cases.

Expected values are written out from the published rules, not from the code under test:
σ'(p) = 2/(1 + e^{5p}) − 1 (σ'(−1) = 0.98661, σ'(−0.5) = 0.84828 as NAB's docstring states);
a TP at row i of window [a, b] earns σ'(−(b − i + 1)/(b − a + 1)) / σ'(−1); an FP after window
[a, b] costs fp · σ'(|i − b| / (b − a)), before any window fp · −1; a missed window −fn.
"""

from __future__ import annotations

import json
import math
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
LOW_FP = PROFILES_DEFAULT["reward_low_FP_rate"]
LOW_FN = PROFILES_DEFAULT["reward_low_FN_rate"]


def sig(p: float) -> float:  # the published scaled sigmoid, written independently
    return -1.0 if p > 3 else 2.0 / (1.0 + math.exp(5.0 * p)) - 1.0


def one(n: int, windows: list[tuple[int, int]], rows: list[int], profile: dict[str, float] = STD) -> float:
    d = np.zeros(n, bool)
    d[rows] = True
    return FileScorer.build(n, windows).score(d, profile)["score"]


def test_scaled_sigmoid_and_probation() -> None:
    assert scaled_sigmoid(-1.0) == pytest.approx(0.98661, abs=1e-5) == MAX_TP
    assert scaled_sigmoid(-0.5) == pytest.approx(0.84828, abs=1e-5)
    assert scaled_sigmoid(0.0) == 0.0 and scaled_sigmoid(3.0) > -1.0 and scaled_sigmoid(3.01) == -1.0
    # min(floor(15 %), 750): 150 of 1000, 750 of 10,000, floor(0.15 · 999) = 149
    assert probationary_length(1000) == 150 and probationary_length(10_000) == 750
    assert probationary_length(999) == 149


W = [(400, 499)]  # one 100-row window in a 1000-row file (probation 150)


def test_detection_at_window_start_middle_end() -> None:
    assert one(1000, W, [400]) == pytest.approx(1.0)  # left edge: the full tp weight
    assert one(1000, W, [450]) == pytest.approx(0.84828 / 0.98661, abs=1e-5)  # half-way: σ'(−0.5)/σ'(−1)
    assert one(1000, W, [499]) == pytest.approx(sig(-0.01) / sig(-1.0))  # last row: position −1/100
    assert 0 < one(1000, W, [499]) < 0.03


def test_detection_just_after_and_far_from_a_window() -> None:
    # just past the right edge: an FP scaled by σ'(1/99) ≈ −0.025, plus the missed window
    assert one(1000, W, [500]) == pytest.approx(-1.0 + 0.11 * sig(1 / 99))
    assert -1.0 - 0.003 < one(1000, W, [500]) < -1.0
    # 401 rows past a 100-row window: more than 3 widths away, the full FP cost
    assert one(1000, W, [900]) == pytest.approx(-1.0 - 0.11)
    # before any window: the full FP cost, in each profile's weight
    assert one(1000, W, [200]) == pytest.approx(-1.11)
    assert one(1000, W, [200], LOW_FP) == pytest.approx(-1.22)
    assert one(1000, W, [200], LOW_FN) == pytest.approx(-2.11)


def test_only_the_earliest_detection_in_a_window_counts() -> None:
    both = one(1000, W, [420, 450])
    assert both == pytest.approx(sig(-0.8) / sig(-1.0))
    assert both == one(1000, W, [420])  # the later one adds nothing and costs nothing
    d = np.zeros(1000, bool)
    d[[420, 450, 460]] = True
    assert FileScorer.build(1000, W).score(d, STD)["tp"] == 1


def test_probationary_region() -> None:
    assert one(1000, W, list(range(150))) == -1.0  # detections in the first 150 rows are not scored
    # a window straddling the end of probation: only its rows from 150 on count
    straddle = [(100, 199)]
    assert one(1000, straddle, [120]) == -1.0  # detection in probation: window missed
    assert one(1000, straddle, [150]) == pytest.approx(0.84828 / 0.98661, abs=1e-5)
    # a window wholly inside probation is neither a TP nor an FN
    assert one(1000, [(10, 50)], []) == 0.0
    assert one(1000, [(10, 50)], [60]) == 0.0  # an FP inside probation is not scored either


def test_file_with_no_windows() -> None:
    assert one(1000, [], []) == 0.0
    assert one(1000, [], [500, 600]) == pytest.approx(-0.22)  # every FP costs the full weight


def test_fp_between_two_windows_uses_the_previous_window() -> None:
    wins = [(400, 499), (800, 899)]
    # row 550: 51 rows past the first window (width 100) → σ'(51/99); second window missed
    assert one(1000, wins, [400, 550]) == pytest.approx(1.0 + 0.11 * sig(51 / 99) - 1.0)


def test_corpus_normalisation_null_and_perfect() -> None:
    a = FileScorer.build(1000, [(400, 499)])
    b = FileScorer.build(2000, [(1500, 1599)])
    c = FileScorer.build(500, [])
    sa, sb, sc = np.zeros(1000), np.zeros(2000), np.zeros(500)
    sa[400], sb[1500] = 0.9, 0.8
    files = [(a, sa), (b, sb), (c, sc)]
    r = score_corpus(files, {"standard": STD})
    assert r.scores["standard"] == pytest.approx(100.0) and r.thresholds["standard"] <= 0.8
    null = score_corpus(files, {"standard": STD}, threshold=0.95)  # nothing reaches it
    assert null.scores["standard"] == pytest.approx(0.0)
    # own decisions: one window found at its start (+1), one missed (−1): raw 0; null −2, perfect 2 → 50
    own = score_corpus(files, {"standard": STD}, decisions=[sa > 0.85, sb > 0.85, sc > 0.85])
    assert own.scores["standard"] == pytest.approx(50.0)
    # plus a far FP in the file without windows: raw −0.11 → 100 · 1.89 / 4
    fp = sc > 0.85
    fp[300] = True
    own = score_corpus(files, {"standard": STD}, decisions=[sa > 0.85, sb > 0.85, fp])
    assert own.scores["standard"] == pytest.approx(100 * 1.89 / 4)
    # low FN: raw 1 − 2 = −1, null −4, perfect 2 → 100 · 3 / 6
    own = score_corpus(files, {"low_fn": LOW_FN}, decisions=[sa > 0.85, sb > 0.85, sc > 0.85])
    assert own.scores["low_fn"] == pytest.approx(100 * 3 / 6)


def test_threshold_is_score_at_or_above() -> None:
    a = FileScorer.build(1000, [(400, 499)])
    s = np.zeros(1000)
    s[400] = 0.5
    assert score_corpus([(a, s)], {"standard": STD}, threshold=0.5).scores["standard"] == pytest.approx(100.0)


def test_window_timestamps_map_to_rows() -> None:
    from shared.csvdata import parse_timestamp

    ts = np.array([parse_timestamp(f"2024-01-01 00:{m:02d}:00") for m in range(60)])
    assert window_indices(ts, [["2024-01-01 00:10:00.000000", "2024-01-01 00:19:00.000000"]]) == [(10, 19)]


def test_results_files_are_scored_as_written(tmp_path: Path) -> None:
    """score_results reads is_anomaly and anomaly_score back from the files: what we write is what we score."""
    from cloud_hub.evaluation.nab import score_results

    nab = tmp_path / "nab"
    (nab / "data" / "cat").mkdir(parents=True)
    (nab / "labels").mkdir()
    ts = [f"2024-01-{1 + m // 1440:02d} {m // 60 % 24:02d}:{m % 60:02d}:00" for m in range(1000)]
    (nab / "data" / "cat" / "f.csv").write_text("timestamp,value\n" + "".join(f"{t},1.0\n" for t in ts))
    (nab / "labels" / "combined_windows.json").write_text(json.dumps(
        {"cat/f.csv": [[ts[400] + ".000000", ts[499] + ".000000"]]}))
    res = tmp_path / "results" / "det" / "cat"
    res.mkdir(parents=True)
    flag = {450: 1, 900: 1}
    score = {450: 0.9, 900: 0.6, 420: 0.4}
    (res / "det_f.csv").write_text("timestamp,value,anomaly_score,label,is_anomaly\n" + "".join(
        f"{t},1.0,{score.get(i, 0.0)},{int(400 <= i <= 499)},{flag.get(i, 0)}\n" for i, t in enumerate(ts)))
    s = score_results(nab, tmp_path / "results" / "det", ["cat/f.csv"])
    raw = sig(-0.5) / sig(-1.0) - 0.11  # TP half-way, FP far past the window
    assert s["own_decision"]["standard"] == pytest.approx(round(100 * (raw + 1) / 2, 2))
    # sweep: best at >= 0.4 (rows 420, 450, 900): the earliest TP minus the far FP
    assert s["standard"] == pytest.approx(round(100 * (sig(-0.8) / sig(-1.0) - 0.11 + 1) / 2, 2))


NAB = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "nab"


@pytest.mark.skipif(not NAB.exists(), reason="NAB corpus not present (../shared/datasets/nab)")
def test_real_corpus_null_and_perfect() -> None:
    from cloud_hub.evaluation.nab import _read_raw, data_files
    from shared.csvdata import parse_timestamp

    windows = json.loads((NAB / "labels" / "combined_windows.json").read_text())
    files = data_files(NAB)
    assert len(files) == 58
    scored = []
    for name in files[:12]:
        raw_ts, _ = _read_raw(NAB / "data" / name)
        ts = np.array([parse_timestamp(t) for t in raw_ts])
        wins = window_indices(ts, windows[name])
        assert len(wins) == len(windows[name])  # every labelled window lands on rows
        assert all(raw_ts[a] + ".000000" == w[0] or raw_ts[a] == w[0] for (a, _), w in zip(wins, windows[name],
                                                                                           strict=True))
        fs = FileScorer.build(len(ts), wins)
        scored.append((fs, fs.perfect().astype(float)))
    assert score_corpus(scored, {"standard": STD}).scores["standard"] == pytest.approx(100.0)
