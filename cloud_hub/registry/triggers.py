"""`serve`'s retrain triggers: measure what the policy looks at from the database, and run `cloud-hub
retrain` in a child process (niced, one at a time) when :func:`cloud_hub.registry.policy.due` says so.

Training runs in a child so the ingest threads keep their CPU share and a crashed training cannot take
`serve` down; the child stores its decision like a manual `cloud-hub retrain` does.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cloud_hub import db
from cloud_hub.data import npy_load
from cloud_hub.home import HubHome
from cloud_hub.procs import die_with_parent
from cloud_hub.registry.champion import champion
from cloud_hub.registry.policy import RetrainConfig, Trigger, TriggerInputs, due

log = logging.getLogger(__name__)

NICE = 10  # the child's niceness: ingest first


def _devices(session: Session, group: str) -> list[str] | None:
    if not group:
        return None
    return list(session.scalars(select(db.Device.device_id).where(db.Device.group == group)))


def last_retrain(session: Session, group: str) -> float | None:
    """When the group's last retrain (any outcome) started; manual promotions do not count."""
    return session.scalar(select(func.max(db.RetrainDecision.started_at)).where(
        db.RetrainDecision.device_group == group, db.RetrainDecision.trigger != db.RetrainTrigger.PROMOTE))


def data_drift(session: Session, group: str, devices: list[str] | None, since: float) -> float:
    """Largest |recent mean − training mean| / training std over the features of the group's champion,
    on the readings synced (received) since ``since``.  NaN when either side is unknown."""
    champ = champion(session, group)
    lin = session.get(db.ModelLineage, champ.version) if champ else None
    if lin is None or not lin.data.get("feature_mean"):
        return math.nan
    feats, mean, std = lin.data["features"], lin.data["feature_mean"], lin.data["feature_std"]
    query = select(db.SyncBatch).where(db.SyncBatch.received_at >= since)
    if devices is not None:
        query = query.where(db.SyncBatch.device_id.in_(devices))
    sums = np.zeros(len(feats))
    counts = np.zeros(len(feats))
    for b in session.scalars(query):
        data = npy_load(b.data)
        for j, f in enumerate(feats):
            if f in b.features:
                col = data[:, 1 + list(b.features).index(f)]
                ok = np.isfinite(col)
                sums[j] += col[ok].sum()
                counts[j] += ok.sum()
    shifts = [abs(sums[j] / counts[j] - mean[j]) / max(std[j], 1e-9)
              for j in range(len(feats)) if counts[j] and mean[j] is not None and std[j] is not None]
    return float(max(shifts)) if shifts else math.nan


def anomaly_rates(session: Session, devices: list[str] | None, now: float, window_s: float) -> tuple[float, float]:
    """Anomaly events per hour received in the last ``window_s`` and in the window before it."""

    def count(a: float, b: float) -> int:
        q = select(func.count()).select_from(db.AnomalyEvent).where(db.AnomalyEvent.received_at > a,
                                                                    db.AnomalyEvent.received_at <= b)
        if devices is not None:
            q = q.where(db.AnomalyEvent.device_id.in_(devices))
        return int(session.scalar(q) or 0)

    per_hour = 3600.0 / window_s
    return count(now - window_s, now) * per_hour, count(now - 2 * window_s, now - window_s) * per_hour


def measure(session: Session, group: str, policy: RetrainConfig, window: int, now: float | None = None,
            last_spawn: float | None = None) -> TriggerInputs:
    """What :func:`due` needs for ``group``, from the database (``last_spawn``: a retrain started by this
    scheduler that may not have stored its decision yet)."""
    now = time.time() if now is None else now
    devices = _devices(session, group)
    last = last_retrain(session, group)
    if last_spawn is not None:
        last = max(last or last_spawn, last_spawn)
    rows_q = select(func.coalesce(func.sum(db.SyncBatch.rows), 0))
    if last is not None:
        rows_q = rows_q.where(db.SyncBatch.received_at > last)
    if devices is not None:
        rows_q = rows_q.where(db.SyncBatch.device_id.in_(devices))
    new_rows = int(session.scalar(rows_q) or 0)
    drift = data_drift(session, group, devices, now - policy.drift_lookback_s) if policy.drift_threshold else math.nan
    recent, baseline = (anomaly_rates(session, devices, now, policy.anomaly_rate_window_s)
                        if policy.anomaly_rate_factor else (0.0, 0.0))
    return TriggerInputs(now=now, last_retrain_at=last, new_windows=new_rows // window, drift=drift,
                         recent_anomaly_rate=recent, baseline_anomaly_rate=baseline)


def watched_groups(policy: RetrainConfig) -> list[str]:
    """The configured groups, else the fleet as a whole ("")."""
    return list(policy.groups) or [""]


class RetrainScheduler:
    """Checks the triggers every ``check_interval_s`` and runs one `cloud-hub retrain` child at a time.

    ``is_leader`` gates it when several `serve` workers share a database (only the leader retrains).
    """

    def __init__(self, home: HubHome, is_leader: Callable[[], bool] | None = None,
                 command: list[str] | None = None) -> None:
        self.home = home
        cfg = home.config()
        self.policy = cfg.retrain
        self.window = cfg.training.window
        self.is_leader = is_leader or (lambda: True)
        self.command = command or [sys.executable, "-m", "cloud_hub.cli"]
        self.stop_event = threading.Event()
        self.child: subprocess.Popen[bytes] | None = None
        self.child_group = ""
        self.last_spawn: dict[str, float] = {}
        self.started: list[tuple[str, Trigger]] = []  # what it ran (for status and tests)
        self.thread = threading.Thread(target=self._loop, name="retrain-scheduler", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self.stop_event.set()
        self.thread.join(timeout_s)
        if self.child is not None and self.child.poll() is None:
            self.child.terminate()
            try:
                self.child.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.child.kill()

    def _loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.check()
            except Exception:  # a broken check must not end the scheduler: log and try again next interval
                log.exception("retrain trigger check failed")
            self.stop_event.wait(self.policy.check_interval_s)

    def busy(self) -> bool:
        if self.child is None:
            return False
        if self.child.poll() is None:
            return True
        log.info("retrain of %s finished with exit code %s", self.child_group or "fleet", self.child.returncode)
        self.child = None
        return False

    def check(self) -> Trigger | None:
        """One pass: start a retrain for the first group whose trigger fires (returns that trigger)."""
        if self.busy() or not self.is_leader():
            return None
        with self.home.sessions()() as s:
            for group in watched_groups(self.policy):
                trig = due(self.policy, measure(s, group, self.policy, self.window,
                                                last_spawn=self.last_spawn.get(group)))
                if trig is not None:
                    self._spawn(group, trig)
                    return trig
        return None

    def _spawn(self, group: str, trig: Trigger) -> None:
        logs = self.home.path / "logs"
        logs.mkdir(exist_ok=True)
        log_path: Path = logs / f"retrain-{int(time.time())}-{group or 'fleet'}.log"
        args = [*self.command, "--home", str(self.home.path), "retrain", "--group", group, "--trigger",
                trig.kind.value, "--trigger-detail", json.dumps(trig.detail)]
        log.info("retrain of %s triggered by %s %s → %s", group or "fleet", trig.kind.value, trig.detail, log_path)
        parent_exit = die_with_parent()

        def preexec() -> None:
            os.nice(NICE)
            if parent_exit is not None:
                parent_exit()

        with open(log_path, "ab") as out:
            self.child = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, preexec_fn=preexec)  # noqa: PLW1509
        self.child_group = group
        self.last_spawn[group] = time.time()
        self.started.append((group, trig))

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until no retrain child runs (tests, shutdown)."""
        deadline = time.monotonic() + timeout_s
        while self.child is not None and self.child.poll() is None:
            if time.monotonic() > deadline:
                return False
            try:
                self.child.wait(min(1.0, max(0.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                continue
        return True
