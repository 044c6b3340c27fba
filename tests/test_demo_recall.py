"""`cloud-hub demo-recall`: the demo's detection measured offline, and the scoring it shares with the demo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cloud_hub.cli import main
from cloud_hub.demo.offline import RecallSettings, demo_streams
from cloud_hub.demo.score import GRACE_S, detection_summary
from cloud_hub.demo.simulator import KINDS, Injected


def test_detection_summary_counts_kinds_misses_and_false_alarms() -> None:
    spans = [Injected("a", "spike", "power", 10.0, 10.1), Injected("a", "stuck", "power", 20.0, 28.0),
             Injected("b", "spike", "power", 10.0, 10.1)]
    events = [("a", 10.05), ("a", 28.0 + GRACE_S), ("b", 5.0), ("b", 14.0)]
    s = detection_summary(events, spans)
    assert s["detected_by_kind"] == {"spike": [1, 2], "stuck": [1, 1]}
    assert s["recall_by_kind"] == {"spike": 0.5, "stuck": 1.0}
    assert s["false_alarms"] == 2 and s["false_events"] == [{"device": "b", "ts": 5.0}, {"device": "b", "ts": 14.0}]
    assert [m["device"] for m in s["missed"]] == ["b"]
    assert s["injected_detected"] == 2 and s["recall"] == round(2 / 3, 4)


def test_streams_inject_every_kind_only_in_the_detection_stretch() -> None:
    settings = RecallSettings(runs=1, detect_s=60, collect_s=20, epochs=1)
    streams = demo_streams(1, settings)
    assert len(streams) == 3
    for s in streams:
        assert len(s.ts) == s.values.shape[0] == 1600 and s.detect_from == 400
        assert all(i.start >= s.ts[s.detect_from] for i in s.injected)
    assert {i.kind for s in streams for i in s.injected} == set(KINDS)
    again = demo_streams(1, settings)  # same run, same seeds: the same data
    assert np.array_equal(again[0].values, streams[0].values, equal_nan=True)


@pytest.mark.integration
def test_demo_recall_finds_injected_spikes(tmp_path: Path) -> None:
    out = tmp_path / "recall.json"
    r = CliRunner().invoke(main, ["demo-recall", "--runs", "1", "--detect-s", "45", "--collect-s", "45", "--epochs",
                                  "8", "--workdir", str(tmp_path / "w"), "--out", str(out)])
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    (run,) = report["runs"]
    assert set(run["detected_by_kind"]) <= set(KINDS) and run["injected_anomalies"] >= 9
    hit, n = run["detected_by_kind"]["spike"]
    assert n >= 3 and hit == n  # a spike of 0.8 × the daily amplitude: every model must see it
    assert run["agreement_bundle"]["windows"] > 0 and 0 <= run["agreement_bundle"]["flag_agreement"] <= 1
    stream = run["agreement_stream"]
    assert stream["windows"] == 3 * 45 * 20 and stream["keras_flagged"] > 0
    assert report["total"]["false_alarms_per_run"] == [run["false_alarms"]]
    keras = run["score_only"]["keras"]["detected_by_kind"]  # the Keras model's own detection, next to int8's
    assert keras["spike"][1] == n and set(run["score_only"]["int8"]["detected_by_kind"]) == set(keras)
    assert "demo recall, offline" in r.output and "spike" in r.output


def test_the_demo_writes_its_score_weights_into_the_hub_config(tmp_path: Path) -> None:
    from cloud_hub.demo.run import QUICK, Phases
    from cloud_hub.home import HubHome

    home = HubHome(tmp_path / "hub")
    home.init()
    home.config_path.write_text(QUICK.training_toml(home.config_path.read_text()))
    cfg = home.config().training
    assert (cfg.epochs, cfg.alpha, cfg.beta, cfg.prediction_steps) == (
        QUICK.epochs, Phases().alpha, Phases().beta, Phases().prediction_steps)
    with pytest.raises(RuntimeError, match="template lacks"):
        QUICK.training_toml("[training]\n")
