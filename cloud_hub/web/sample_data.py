"""Demo-like rows written straight into a hub database: for the dashboard's tests, its page-load bench
and the README screenshot (fast: no training, no broker)."""

from __future__ import annotations

import math
import random
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert

from cloud_hub import db
from cloud_hub.demo.simulator import FEATURES
from cloud_hub.home import HubHome
from cloud_hub.registry.labels import label_anomaly

GROUPS = ("plant-a", "plant-b", "warehouse")
PROFILES = ("rpi4-64", "rpi3-32", "rpi5-64")


def populate(home: HubHome, devices: int = 6, anomalies: int = 60, *, seed: int = 0, now: float | None = None,
             span_s: float = 6 * 3600, telemetry_s: float = 60.0) -> list[str]:
    """Insert ``devices`` devices (mostly online, one offline, one rolled back), two model versions with
    int8 bundles, a rollout of v2, status histories and ``anomalies`` events spread over ``span_s``.
    Returns the device ids."""
    rng = random.Random(seed)
    now = time.time() if now is None else now
    names = [f"gw-{i:03d}" for i in range(devices)]
    sessions = home.sessions()
    with sessions() as s:
        for version, created in ((1, now - span_s - 3600), (2, now - span_s / 2)):
            s.add(db.ModelVersion(version=version, name="ae-lstm", source="synced" if version > 1 else "csv:normal.csv",
                                  artifacts_dir=f"models/v{version}", created_at=datetime.fromtimestamp(created, UTC),
                                  training={"threshold": 0.02 + 0.005 * version, "train_windows": 4000 * version,
                                            "epochs_run": 12, "mode": "unsupervised"}))
            s.flush()
            s.add(db.Bundle(version=version, quantization="int8", path=f"bundles/v{version}-int8.tar", sha256="0" * 64,
                            size=53_000 + 100 * version,
                            agreement={"score_pearson": 0.988, "flag_agreement": 0.991}))
            s.add(db.ModelLineage(version=version, parent_version=version - 1 or None, device_group="",
                                  data={"source": "synced" if version > 1 else "csv", "rows": 36_000 * version,
                                        "devices": names[:3], "fp_stretches": 2 * (version - 1)},
                                  settings={"model": "ae-lstm", "epochs": 30, "window": 32},
                                  metrics={"holdout": {"windows": 900 * version, "flag_rate": 0.002 / version,
                                                       "threshold": 0.02 + 0.005 * version,
                                                       "score_p50": 0.006, "score_p99": 0.018}},
                                  created_at=created))
        s.flush()
        s.add(db.Champion(device_group="", version=2, promoted_at=now - span_s / 2, reason="retrain: challenger better"))
        s.add(db.RetrainDecision(device_group="", trigger=db.RetrainTrigger.NEW_DATA, trigger_detail={"windows": 4000},
                                 started_at=now - span_s / 2 - 300, finished_at=now - span_s / 2,
                                 outcome=db.RetrainOutcome.PROMOTED, champion_version=1, challenger_version=2,
                                 margin=0.02, numbers={"improvement": 0.07}, rollout_id=1,
                                 detail="challenger F1 0.91 vs champion 0.84 on the held-out slice"))
        started = now - span_s / 2
        # A staged rollout of v2 in its second wave: 10% healthy, 50% in flight (one rolled back), rest queued.
        rollout = db.Rollout(bundle_id=2, version=2, started_at=datetime.fromtimestamp(started, UTC),
                             phases=[10, 50, 100], wave=1, wave_started_at=started + 900, max_failure=0.25,
                             max_anomaly_increase=0.02, wait_s=900, updated_at=now)
        s.add(rollout)
        s.flush()
        device_rows: list[dict[str, Any]] = []
        status_rows: list[dict[str, Any]] = []
        rollout_rows: list[dict[str, Any]] = []
        first, second = max(1, math.ceil(0.1 * devices)), math.ceil(0.5 * devices)
        for i, name in enumerate(names):
            wave = 0 if i < first else 1 if i < second else 2
            offline = i == devices - 1 and devices > 2
            rolled_back = i == first and devices > 2  # the first device of the second wave
            d_state = (db.DeviceRolloutState.HEALTHY if wave == 0 else db.DeviceRolloutState.QUEUED if wave == 2
                       else db.DeviceRolloutState.ROLLED_BACK if rolled_back else db.DeviceRolloutState.ACTIVATED)
            version = 2 if d_state in (db.DeviceRolloutState.HEALTHY, db.DeviceRolloutState.ACTIVATED) else 1
            model_state = {db.DeviceRolloutState.ACTIVATED: "active", db.DeviceRolloutState.ROLLED_BACK: "rolled_back"
                           }.get(d_state, "committed")
            last_seen = now - (3600 if offline else rng.uniform(0, 20))
            error = "probation: anomaly rate 0.31 > 0.05" if rolled_back else ""
            device_rows.append({
                "device_id": name, "first_seen": now - span_s - 7200, "last_seen": last_seen, "online": not offline,
                "model_version": version, "model_state": model_state,
                "agent_version": "0.1.0", "runtime": "litert", "readings_scored": rng.randint(10_000, 900_000),
                "profile": PROFILES[i % len(PROFILES)], "group": GROUPS[i % len(GROUPS)],
                "tags": {"line": str(i % 4)}, "last_error": error,
            })
            history = [("committed", 1, now - span_s - 3600)]
            if wave < 2:
                t = started + wave * 900 + rng.uniform(1, 30)
                history += [("downloading", 2, t), ("verifying", 2, t + 2), ("active", 2, t + 5)]
                if d_state != db.DeviceRolloutState.ACTIVATED:
                    history.append((model_state, version, t + 600))
            for st, v, t in history:
                status_rows.append({"device_id": name, "msg_id": f"{name}-{len(status_rows)}", "ts": t,
                                    "received_at": t, "state": "online", "model_state": st, "model_version": v,
                                    "failed_version": 2 if st == "rolled_back" else None,
                                    "rollout_id": rollout.id if t >= started else None,
                                    "error": error if st == "rolled_back" else ""})
            rollout_rows.append({"rollout_id": rollout.id, "device_id": name, "wave": wave, "state": d_state,
                                 "previous_version": 1, "sent_at": started + wave * 900 if wave < 2 else None,
                                 "updated_at": now - rng.uniform(0, 600), "detail": error})
        s.execute(insert(db.Device), device_rows)
        s.execute(insert(db.StatusChange), status_rows)
        s.execute(insert(db.RolloutDevice), rollout_rows)
        rows = []
        # Anomalies come in bursts (an injected spike, drift or stuck sensor raises several events in a row).
        # The first two devices always have some (tests open their pages); low ids are noisier.
        bursts = [(names[i] if i < 2 else names[int(rng.random() ** 2 * devices)], now - rng.uniform(0, span_s),
                   rng.uniform(1.1, 5.0)) for i in range(max(1, anomalies // 8))]
        for n in range(anomalies):
            name, center, level = bursts[n % len(bursts)]
            ts = min(now, max(now - span_s, center + rng.gauss(0, 40)))
            threshold = 0.025 if ts < now - span_s / 2 else 0.03
            feats = rng.sample(list(FEATURES), k=min(3, len(FEATURES)))
            weights = sorted((rng.random() for _ in feats), reverse=True)
            total = sum(weights) * rng.uniform(1.0, 1.3)
            rows.append({"device_id": name, "event_id": f"e{n}", "ts": ts, "detected_at": ts + 0.01,
                         "received_at": ts + 0.02, "score": threshold * level * rng.uniform(0.95, 1.25),
                         "threshold": threshold, "model_version": 1 if ts < now - span_s / 2 else 2,
                         "top_features": feats, "attribution": {f: w / total for f, w in zip(feats, weights, strict=True)},
                         "likelihood": rng.uniform(0.9, 1.0)})
            if len(rows) == 5000:
                s.execute(insert(db.AnomalyEvent), rows)
                rows = []
        if rows:
            s.execute(insert(db.AnomalyEvent), rows)
        by_device: dict[str, list[tuple[float, float]]] = {}
        for name, center, level in bursts:
            by_device.setdefault(name, []).append((center, level))
        tele: list[dict[str, Any]] = []
        for name in names:
            t = now - span_s
            while t <= now and telemetry_s > 0:
                threshold = 0.025 if t < now - span_s / 2 else 0.03
                base = threshold * (0.35 + 0.1 * math.sin(t / 3600) + rng.uniform(0, 0.25))
                peak = max((lvl * threshold * math.exp(-(((t - c) / 90) ** 2)) for c, lvl in by_device.get(name, [])),
                           default=0.0)
                top = max(base, peak)
                tele.append({"device_id": name, "msg_id": f"t{len(tele)}", "ts": t, "received_at": t + 0.02,
                             "interval_s": telemetry_s, "scored": int(telemetry_s * 20), "score_mean": base * 0.6,
                             "score_max": top})
                t += telemetry_s
                if len(tele) == 5000:
                    s.execute(insert(db.TelemetryRecord), tele)
                    tele = []
        if tele:
            s.execute(insert(db.TelemetryRecord), tele)
        s.commit()
        for anomaly_id, label in ((1, "true_positive"), (2, "false_positive"))[: max(0, min(2, anomalies))]:
            label_anomaly(s, anomaly_id, label, note="sample", by="operator")
    return names
