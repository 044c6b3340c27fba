"""The retrain loop: challenger vs champion on held-out synced data plus labels, decisions stored, triggers."""

from __future__ import annotations

import json
import math
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud_hub import db, training
from cloud_hub.brokers import RunningBroker
from cloud_hub.cli import main
from cloud_hub.data import from_csv, from_synced, npy_bytes
from cloud_hub.home import HubHome
from cloud_hub.registry import champion, evaluate, labels, lineage, triggers
from cloud_hub.registry.policy import RetrainConfig, TriggerInputs, due, judge
from tests.conftest import simulated_series, wait_until, write_csv

RATE_HZ = 20.0
SHIFT = np.array([0.0, 0.0, 2.0, 1.5])  # power and vibration moved: the champion never saw such readings
TRAINING = {"epochs": 2, "window": 16, "hidden": 16, "latent": 4, "lstm_units": 8}


def sync(s: Session, device: str, ts: np.ndarray, values: np.ndarray, flags: np.ndarray,
         received_at: float | None = None, batch: int = 600) -> None:
    from cloud_hub.demo.simulator import FEATURES

    for i in range(0, len(ts), batch):
        t, v, f = ts[i:i + batch], values[i:i + batch], flags[i:i + batch]
        s.add(db.SyncBatch(device_id=device, batch_id=uuid.uuid4().hex, received_at=received_at or time.time(),
                           start_ts=float(t[0]), end_ts=float(t[-1]), rows=len(t), features=list(FEATURES),
                           data=npy_bytes(np.column_stack([t, v])), flags=npy_bytes(f.astype(np.int8))))


def event(s: Session, device: str, ts: float) -> int:
    e = db.AnomalyEvent(device_id=device, event_id=uuid.uuid4().hex, ts=ts, detected_at=ts, received_at=time.time(),
                        score=9.0, threshold=1.0, model_version=1)
    s.add(e)
    s.flush()
    return e.id


@pytest.mark.integration
def test_challenger_promoted_then_kept_and_every_decision_stored(tmp_path: Path, mosquitto: RunningBroker) -> None:
    home = HubHome(tmp_path / "hub")
    home.init(mosquitto.url)
    home.update_config({"training": TRAINING, "retrain": {"margin": 0.05, "phases": [100]}})
    ts, values = simulated_series(60, seed=1)
    v1 = training.train(home, from_csv(write_csv(tmp_path / "a.csv", ts, values)), home.config().training)
    t0 = 1_800_000_000.0
    with home.sessions()() as s:
        champion.promote(s, v1.version, "north")
        for d, g in (("n1", "north"), ("n2", "north"), ("s1", "south")):
            s.add(db.Device(device_id=d, first_seen=t0, last_seen=t0, group=g))
        ids = {}
        for seed, d in ((2, "n1"), (3, "n2"), (4, "s1")):
            ts, values = simulated_series(90, seed=seed, t0=t0)
            values = values + SHIFT
            flags = np.zeros(len(ts), np.int8)
            if d == "n1":  # the agent flagged a stretch the operator says was normal, and one nobody labelled
                flags[400:410] = 1
                ids["fp"] = event(s, d, float(ts[405]))
                flags[1000:1005] = 1
            if d == "n2":  # a real spike, flagged and labelled true positive
                values[600:620, 3] += 6.0
                flags[600:620] = 1
                ids["tp"] = event(s, d, float(ts[610]))
            sync(s, d, ts, values, flags)
        s.commit()
        labels.label_anomaly(s, ids["fp"], db.LabelKind.FALSE_POSITIVE, "maintenance")
        labels.label_anomaly(s, ids["tp"], db.LabelKind.TRUE_POSITIVE)

    runner = CliRunner()
    h = ["--home", str(home.path)]
    out = runner.invoke(main, [*h, "retrain", "--group", "north", "--wait", "0"])
    assert out.exit_code == 0, out.output
    assert "promoted" in out.output
    with home.sessions()() as s:
        d = s.scalars(select(db.RetrainDecision).order_by(db.RetrainDecision.id.desc())).first()
        assert d is not None and d.outcome == db.RetrainOutcome.PROMOTED, d.detail if d else None
        assert (d.trigger, d.champion_version, d.challenger_version) == (db.RetrainTrigger.MANUAL, 1, 2)
        n = d.numbers
        assert n["champion"]["cost"] - n["challenger"]["cost"] >= 0.05
        assert n["champion"]["false_alarm_rate"] > n["challenger"]["false_alarm_rate"]
        assert n["training"]["devices"] == ["n1", "n2"]  # group south's data stays out
        assert n["training"]["fp_rows"] > 0  # the false-positive stretch became normal training data
        assert n["labels"] == {"fp_events": 1, "tp_events": 1}
        assert n["challenger"]["tp_events"] == 1 and n["challenger"]["tp_recall"] == 1.0
        assert n["challenger"]["normal_windows"] > 100
        # Judged by the int8 bundles through the agent's scoring path; the float models' numbers are kept too.
        assert n["scored_with"] == "int8 bundles" and "judged by the int8 bundles" in d.detail
        assert n["float_models"]["challenger"]["tp_recall"] == 1.0
        assert n["float_models"]["champion"]["false_alarm_rate"] > n["float_models"]["challenger"]["false_alarm_rate"]
        assert champion.champion(s, "north") == champion.CurrentChampion(2, champion.ChampionSource.GROUP)
        assert champion.champion(s, "south").version == 2  # type: ignore[union-attr]  # newest, no champion there
        v2 = lineage.version(s, 2)
        assert v2.lineage is not None and v2.lineage.parent_version == 1 and v2.lineage.device_group == "north"
        assert v2.lineage.data["devices"] == ["n1", "n2"] and "evaluation" in v2.lineage.metrics
        assert v2.lineage.data["end_ts"] <= n["holdout_cut"]  # never trained on the held-out slice
        assert [b.quantization for b in v2.bundles] == ["int8"]
        rollout = s.get(db.Rollout, d.rollout_id)
        assert rollout is not None and rollout.version == 2 and rollout.selector == {"group": "north"}
        assert sorted(x.device_id for x in s.scalars(select(db.RolloutDevice).where(
            db.RolloutDevice.rollout_id == rollout.id))) == ["n1", "n2"]  # only the group's devices

    # An unchanged fleet: the next challenger must not win.  Judged by the float models (no export: lean).
    home.update_config({"retrain": {"margin": 0.5, "evaluate_bundles": False}})
    out = runner.invoke(main, [*h, "retrain", "--group", "north", "--no-rollout"])
    assert out.exit_code == 0 and "kept_champion" in out.output, out.output
    home.update_config({"retrain": {"evaluate_bundles": True}})
    # A challenger without a bundle (the scikit-learn baselines do not export): both judged by float models.
    out = runner.invoke(main, [*h, "retrain", "--group", "north", "--no-rollout", "--model", "isolation-forest"])
    assert out.exit_code == 0, out.output
    with home.sessions()() as s:
        d = s.scalars(select(db.RetrainDecision).order_by(db.RetrainDecision.id.desc())).first()
        assert d is not None and d.numbers["scored_with"].startswith("float models (int8 bundles unavailable: v4")
        assert d.numbers["champion"]["cost"] is not None  # the champion judged by its float model as well
    out = runner.invoke(main, [*h, "retrain", "--group", "nowhere"])
    assert out.exit_code == 1 and "no device in group 'nowhere'" in out.output
    out = runner.invoke(main, [*h, "retrain", "history", "--json"])
    hist = [json.loads(line) for line in out.output.splitlines()]
    assert [(x["outcome"], x["trigger"], x["challenger_version"]) for x in hist] == [
        ("failed", "manual", None), (hist[1]["outcome"], "manual", 4), ("kept_champion", "manual", 3),
        ("promoted", "manual", 2), ("promoted", "promote", 1)]
    assert "< margin 0.5" in hist[2]["detail"] and hist[2]["numbers"]["champion"]["cost"] is not None
    assert hist[2]["numbers"]["scored_with"] == "float models" and "judged by the float models:" in hist[2]["detail"]
    with home.sessions()() as s:
        assert champion.champion(s, "north").version == 2  # type: ignore[union-attr]
    out = runner.invoke(main, [*h, "retrain", "history"])
    assert out.exit_code == 0 and "kept_champion" in out.output


def test_training_data_follows_labels(tmp_path: Path) -> None:
    home = HubHome(tmp_path / "hub")
    home.init()
    ts = 1000.0 + np.arange(400) / 10.0
    values = np.column_stack([np.sin(ts), np.cos(ts), ts * 0, ts * 0 + 1])
    flags = np.zeros(400, np.int8)
    flags[100] = flags[300] = 1
    with home.sessions()() as s:
        sync(s, "a", ts, values, flags, batch=150)
        sync(s, "b", ts, values, np.zeros(400, np.int8))
        s.commit()
        plain = from_synced(s, window=8)
        assert plain.rows == 800 and plain.excluded_rows == 2 * 17 and plain.fp_rows == 0
        assert (plain.devices, plain.start_ts, plain.end_ts) == (["a", "b"], 1000.0, pytest.approx(1039.9))
        fp = {"a": [(float(ts[99]), float(ts[101]))]}
        tp = {"b": [(float(ts[200]), float(ts[209]))]}
        labelled = from_synced(s, window=8, normal_spans=fp, excluded_spans=tp)
        assert labelled.fp_rows == 3 and labelled.excluded_rows == 17 + 10
        only_a = from_synced(s, window=8, devices=["a"], until=float(ts[199]))
        assert only_a.rows == 200 and only_a.devices == ["a"]


def test_trigger_policy() -> None:
    cfg = RetrainConfig(min_interval_s=100, every_hours=1, new_windows=50, drift_threshold=2.0,
                        anomaly_rate_factor=3.0, anomaly_rate_min_per_hour=5)
    assert due(cfg, TriggerInputs(now=1000, last_retrain_at=950, new_windows=10**6)) is None  # cooldown
    assert due(cfg, TriggerInputs(now=10_000, last_retrain_at=9_800)) is None
    assert due(cfg, TriggerInputs(now=10_000, last_retrain_at=None)).kind == db.RetrainTrigger.SCHEDULE  # type: ignore[union-attr]
    got = due(cfg, TriggerInputs(now=10_000, last_retrain_at=9_000, new_windows=50))
    assert got is not None and got.kind == db.RetrainTrigger.NEW_DATA and got.detail["new_windows"] == 50
    got = due(cfg, TriggerInputs(now=10_000, last_retrain_at=9_000, drift=2.5))
    assert got is not None and got.kind == db.RetrainTrigger.DATA_DRIFT
    assert due(cfg, TriggerInputs(now=10_000, last_retrain_at=9_000, drift=math.nan)) is None
    got = due(cfg, TriggerInputs(now=10_000, last_retrain_at=9_000, recent_anomaly_rate=12, baseline_anomaly_rate=3))
    assert got is not None and got.kind == db.RetrainTrigger.ANOMALY_RATE
    assert due(cfg, TriggerInputs(now=10_000, last_retrain_at=9_000, recent_anomaly_rate=4,
                                  baseline_anomaly_rate=0)) is None  # below the floor
    assert due(cfg, TriggerInputs(now=10_000, last_retrain_at=9_000, recent_anomaly_rate=12,
                                  baseline_anomaly_rate=5)) is None  # not 3x
    off = RetrainConfig()
    assert due(off, TriggerInputs(now=1e9, last_retrain_at=None, new_windows=10**9, drift=99.0,
                                  recent_anomaly_rate=1e6)) is None  # every trigger off by default
    with pytest.raises(ValueError, match="phases"):
        RetrainConfig(phases=[50, 20, 100])


def test_judge_and_label_threshold() -> None:
    assert judge(None, 0.3, None, None, 0.01).promote
    assert judge(0.30, 0.10, None, None, 0.05).promote
    assert not judge(0.12, 0.10, None, None, 0.05).promote
    lost = judge(0.9, 0.1, 1.0, 0.5, 0.05)
    assert not lost.promote and "misses labelled anomalies" in lost.reason
    # labels → threshold: above every FP window, below the weakest TP event, at most 3x, never lower
    assert evaluate.label_threshold(1.0, np.array([1.5, 2.0]), []) == pytest.approx(2.0, rel=1e-5)
    assert evaluate.label_threshold(1.0, np.array([2.0]), [1.8, 5.0]) == pytest.approx(1.8, rel=1e-5)
    assert evaluate.label_threshold(1.0, np.array([9.0]), []) == 3.0
    assert evaluate.label_threshold(1.0, np.array([0.5]), []) == 1.0
    assert evaluate.label_threshold(1.0, np.empty(0), [0.2]) == 1.0


@pytest.mark.integration
def test_trigger_measures_and_the_scheduler_runs_a_retrain(tmp_path: Path) -> None:
    home = HubHome(tmp_path / "hub")
    home.init()
    home.update_config({"training": {"window": 10},
                        "retrain": {"enabled": True, "groups": ["g"], "new_windows": 30, "min_interval_s": 600,
                                    "drift_threshold": 3.0, "anomaly_rate_factor": 2.0,
                                    "anomaly_rate_window_s": 600, "anomaly_rate_min_per_hour": 1.0}})
    now = time.time()
    ts = 1000.0 + np.arange(400)
    with home.sessions()() as s:
        s.add(db.Device(device_id="d1", first_seen=now, last_seen=now, group="g"))
        s.add(db.ModelVersion(version=1, name="ae-lstm", source="t", artifacts_dir="-"))
        s.add(db.ModelLineage(version=1, device_group="g", created_at=now, settings={}, metrics={}, data={
            "features": ["temperature", "humidity", "power", "vibration"], "feature_mean": [0, 0, 0, 0],
            "feature_std": [1, 1, 1, 1]}))
        champion.set_champion(s, 1, "g")
        # every reading flagged by the agent: the retrain child has nothing to train on and fails fast
        sync(s, "d1", ts, np.full((400, 4), 5.0), np.ones(400, np.int8), received_at=now - 60)
        sync(s, "other", ts, np.zeros((400, 4)), np.zeros(400, np.int8), received_at=now - 60)
        for k in range(4):
            s.add(db.AnomalyEvent(device_id="d1", event_id=f"r{k}", ts=1.0, detected_at=1.0, received_at=now - 10 * k,
                                  score=1, threshold=1, model_version=1))
        s.add(db.AnomalyEvent(device_id="d1", event_id="old", ts=1.0, detected_at=1.0, received_at=now - 900,
                              score=1, threshold=1, model_version=1))
        s.commit()
        cfg = home.config().retrain
        x = triggers.measure(s, "g", cfg, window=10, now=now)
        assert x.last_retrain_at is None and x.new_windows == 40  # d1's 400 rows, not "other"'s
        assert x.drift == pytest.approx(5.0)
        assert (x.recent_anomaly_rate, x.baseline_anomaly_rate) == (pytest.approx(24.0), pytest.approx(6.0))

    sched = triggers.RetrainScheduler(home)
    fired = sched.check()  # no decision yet: the schedule-free triggers fire in order (new data first)
    assert fired is not None and fired.kind == db.RetrainTrigger.NEW_DATA
    assert sched.wait_idle(120)

    def stored() -> bool:
        with home.sessions()() as s:
            return s.scalar(select(db.RetrainDecision).where(db.RetrainDecision.device_group == "g")) is not None

    wait_until(stored, 30, "the retrain child's decision")
    with home.sessions()() as s:
        d = s.scalars(select(db.RetrainDecision).where(db.RetrainDecision.device_group == "g")).one()
        assert d.trigger == db.RetrainTrigger.NEW_DATA and d.trigger_detail["new_windows"] == 40
        assert d.outcome == db.RetrainOutcome.FAILED and "not enough data" in d.detail, d.detail
    assert sched.check() is None  # within min_interval_s of that retrain
    assert len(list((home.path / "logs").glob("retrain-*-g.log"))) == 1


@pytest.mark.integration
def test_serve_runs_the_triggers(tmp_path: Path, mosquitto: RunningBroker) -> None:
    """`serve` with [retrain] enabled checks the triggers and runs a retrain child that stores its decision
    (no synced data here: the child fails fast and says why)."""
    import subprocess
    import sys

    from cloud_hub.procs import die_with_parent
    from tests.conftest import REPO

    home = HubHome(tmp_path / "hub")
    home.init(mosquitto.url)
    home.update_config({"retrain": {"enabled": True, "every_hours": 0.0001, "check_interval_s": 0.5}})
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
    serve = subprocess.Popen([sys.executable, "-m", "cloud_hub.cli", "--home", str(home.path), "serve"], cwd=REPO,
                             stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent())
    try:
        def decided() -> bool:
            with home.sessions()() as s:
                return s.scalar(select(db.RetrainDecision)) is not None

        wait_until(decided, 120, "a decision from serve's retrain child")
        with home.sessions()() as s:
            d = s.scalars(select(db.RetrainDecision)).one()
        assert d.trigger == db.RetrainTrigger.SCHEDULE and d.outcome == db.RetrainOutcome.FAILED
        assert "no synced data yet" in d.detail
    finally:
        serve.terminate()
        assert serve.wait(60) == 0, (tmp_path / "serve.log").read_text()
        log.close()
    assert len(list((home.path / "logs").glob("retrain-*-fleet.log"))) == 1  # min_interval_s: one run only
