"""The rollout engine `serve` runs: the one owner that moves rollouts forward.

Each tick (every ``rollout.tick_s``, and at once when an agent reports) it carries out operator commands,
announces the wave in flight to its queued devices, times devices out, judges a settled wave's gates and
then continues, pauses or aborts (sending the wave back), and gives devices that came online their
group's current model.  Everything it knows is in the database, so a restarted hub resumes where it was;
only the leader runs it when several `serve` processes share a database (``is_leader``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

import paho.mqtt.client as mqtt
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cloud_hub import db
from cloud_hub.config import RolloutConfig
from cloud_hub.db.rollouts import DeviceRolloutState, RolloutCommand, RolloutState
from cloud_hub.home import HubHome
from cloud_hub.rollout.announce import Announcer, Archive, archive_of
from cloud_hub.rollout.api import bundle_for, current_target
from cloud_hub.rollout.states import (
    OPEN,
    REACHED,
    SETTLED,
    TransitionError,
    apply_report,
    move_device,
    move_rollout,
)
from cloud_hub.rollout.waves import GateAction, Gates, Selector, anomaly_gate, count, failure_gate
from shared import protocol as p

log = logging.getLogger("cloud_hub.rollout")
D = DeviceRolloutState
R = RolloutState
MIN_TICK_GAP_S = 0.2


def gates_of(r: db.Rollout) -> Gates:
    return Gates(wait_s=r.wait_s, max_failure=r.max_failure, max_anomaly_increase=r.max_anomaly_increase,
                 on_failure=GateAction(r.on_gate_failure))


# Agent model states that say something about a rollout (see states.reported), and those of an agent that
# is not in the middle of an update (only then is it given its current model).
_REPORTING = frozenset({p.ModelState.STAGED, p.ModelState.ACTIVE, p.ModelState.COMMITTED, p.ModelState.FAILED,
                        p.ModelState.ROLLED_BACK})
_SETTLED_AGENT = frozenset({p.ModelState.NONE, p.ModelState.COMMITTED, p.ModelState.FAILED,
                            p.ModelState.ROLLED_BACK})


def on_status(s: Session, device: str, status: p.Status, now: float) -> None:
    """Ingest's hook (inside its transaction): the device's newest rollout row follows what it reports."""
    if status.model_state not in _REPORTING:
        return
    with s.no_autoflush:  # the status rows ingest has pending do not change which rollout row this is
        row = s.execute(select(db.RolloutDevice, db.Rollout).join(db.Rollout, db.Rollout.id == db.RolloutDevice.rollout_id)
                        .where(db.RolloutDevice.device_id == device, db.RolloutDevice.state != D.QUEUED)
                        .order_by(db.Rollout.id.desc()).limit(1)).first()
    if row is not None and apply_report(row[0], status, row[1], now):
        log.debug("rollout %d: %s %s", row[1].id, device, row[0].state.value)


class RolloutEngine:
    def __init__(self, home: HubHome, client: mqtt.Client, sessions: sessionmaker,  # type: ignore[type-arg]
                 cfg: RolloutConfig | None = None, is_leader: Callable[[], bool] = lambda: True) -> None:
        self.home = home
        self.sessions = sessions
        self.cfg = cfg or home.config().rollout
        self.is_leader = is_leader
        self.announcer = Announcer(home, client)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._check: dict[str, float] | None = None  # device -> when it reported; None = all devices (first tick)
        self._thread = threading.Thread(target=self._run, name="hub-rollouts", daemon=True)
        self.ticks = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def wake(self, statuses: Iterable[tuple[str, p.Status]] = ()) -> None:
        """Agents reported: tick now; devices online and not mid-update are checked for their current model."""
        now = time.time()
        settled = {d: now for d, st in statuses if st.state == p.AgentState.ONLINE and st.model_state in _SETTLED_AGENT}
        with self._lock:
            if self._check is not None:
                self._check.update(settled)
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.cfg.tick_s)
            # A burst of statuses wakes the engine once per batch: tick at most every MIN_TICK_GAP_S so the
            # writer keeps the database (a throttle, not a handshake: the tick reads what is stored by then).
            self._stop.wait(MIN_TICK_GAP_S)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                if self.is_leader():
                    self.tick()
            except Exception:  # a bug must not stop the engine: log it and try again next tick
                log.exception("rollout tick failed")

    # ------------------------------------------------------------------ one tick

    def tick(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._lock:
            check, self._check = self._check, {}
        with self.sessions() as s:
            rollouts = list(s.scalars(select(db.Rollout).where(
                db.Rollout.state.in_(OPEN) | db.Rollout.command.is_not(None)).order_by(db.Rollout.id)))
            for r in rollouts:
                self._step(s, r, now)
            self._reconcile(s, check, now)
            s.commit()
        self.ticks += 1

    def _step(self, s: Session, r: db.Rollout, now: float) -> None:
        rows = list(s.scalars(select(db.RolloutDevice).where(db.RolloutDevice.rollout_id == r.id)))
        if r.command is not None:
            command, r.command = r.command, None
            try:
                self._command(s, r, rows, command, now)
            except TransitionError as exc:
                log.warning("rollout %d: %s ignored: %s", r.id, command.value, exc)
        while r.state == R.RUNNING and self._wave(s, r, rows, now):
            pass

    def _command(self, s: Session, r: db.Rollout, rows: list[db.RolloutDevice], command: RolloutCommand,
                 now: float) -> None:
        log.info("rollout %d: operator %s", r.id, command.value)
        if command == RolloutCommand.PAUSE:
            move_rollout(r, R.PAUSED, now, "paused by the operator")
        elif command == RolloutCommand.RESUME:
            move_rollout(r, R.RUNNING, now, "resumed by the operator")
            wave = [x for x in rows if x.wave == r.wave]
            if wave and all(x.state in SETTLED for x in wave):  # paused on this wave's gate: the operator overrides it
                self._advance(s, r, rows, now)
        elif command == RolloutCommand.ABORT:
            move_rollout(r, R.ABORTED, now, "aborted by the operator")
            self._revert(s, r, [x for x in rows if x.wave == r.wave], now, "aborted by the operator")
        else:
            move_rollout(r, R.ROLLED_BACK, now, "rolled back by the operator")
            self._revert(s, r, rows, now, "rolled back by the operator")

    def _wave(self, s: Session, r: db.Rollout, rows: list[db.RolloutDevice], now: float) -> bool:
        """Drive the wave in flight; True if it moved on to another wave (drive that one too)."""
        wave = [x for x in rows if x.wave == r.wave]
        queued = [x for x in wave if x.state == D.QUEUED]
        if queued:
            log.info("rollout %d: announcing v%d to %d device(s) of wave %d/%d", r.id, r.version, len(queued),
                     r.wave + 1, len(r.phases))
            ids = [x.device_id for x in queued]
            devices = {d.device_id: d for d in s.scalars(select(db.Device).where(db.Device.device_id.in_(ids)))}
            list(s.scalars(select(db.DeviceTarget).where(db.DeviceTarget.device_id.in_(ids))))  # into the session
            bundle = s.get(db.Bundle, r.bundle_id)
            assert bundle is not None
            archive = archive_of(s, bundle)
            for x in queued:
                self._send(s, r, x, archive, devices.get(x.device_id), now)
        for x in wave:
            if x.state in (D.SENT, D.VERIFIED, D.ACTIVATED) and x.sent_at is not None and now - x.sent_at > r.wait_s:
                move_device(x, D.TIMED_OUT, now, f"not healthy within {r.wait_s:g} s (was {x.state.value})")
        if not all(x.state in SETTLED for x in wave):
            return False
        gates = gates_of(r)
        verdict = failure_gate(count(x.state for x in wave), gates)
        notes = [verdict.reason]
        if verdict.passed:
            verdict = anomaly_gate(s, wave, r.version, gates, self.cfg.min_gate_readings)
            if verdict.waiting and r.wave_started_at is not None and now - r.wave_started_at < r.wait_s:
                return False
            if verdict.reason:
                notes.append(verdict.reason)
        label = f"wave {r.wave + 1}/{len(r.phases)}"
        if not verdict.passed:
            reason = f"{label} gate: {verdict.reason}"
            log.warning("rollout %d: %s", r.id, reason)
            if gates.on_failure == GateAction.PAUSE:
                move_rollout(r, R.PAUSED, now, reason)
            else:
                move_rollout(r, R.ABORTED, now, reason)
                self._revert(s, r, wave, now, reason)
            return False
        r.reason = f"{label} passed: {'; '.join(n for n in notes if n)}"[:500]
        log.info("rollout %d: %s", r.id, r.reason)
        return self._advance(s, r, rows, now)

    def _advance(self, s: Session, r: db.Rollout, rows: list[db.RolloutDevice], now: float) -> bool:
        if r.wave + 1 >= len(r.phases):
            move_rollout(r, R.COMPLETED, now)
            log.info("rollout %d: v%d completed", r.id, r.version)
            self._reconcile_matching(s, Selector.from_json(r.selector), now)
            return False
        r.wave += 1
        r.wave_started_at, r.updated_at = now, now
        return True

    def _send(self, s: Session, r: db.Rollout, x: db.RolloutDevice, archive: Archive, dev: db.Device | None,
              now: float) -> None:
        """Announce the rollout's bundle to one queued device of the wave in flight."""
        self.announcer.to_device(s, x.device_id, archive, r.id, now)
        x.sent_at = now
        move_device(x, D.SENT, now)
        if dev is not None and dev.model_version == r.version and dev.model_state == p.ModelState.COMMITTED.value:
            move_device(x, D.HEALTHY, now, "already running it")

    def _revert(self, s: Session, r: db.Rollout, rows: Iterable[db.RolloutDevice], now: float, reason: str) -> None:
        """Send devices the rollout reached back to their previous model (signed, on their own topic)."""
        for x in rows:
            if x.state == D.QUEUED:
                continue
            prev = bundle_for(s, x.previous_version, _quantization(s, r)) if x.previous_version is not None else None
            self.announcer.to_device(s, x.device_id, archive_of(s, prev) if prev else None, r.id, now)
            if x.state in REACHED:
                back = f"v{x.previous_version}" if prev else "no model (announcement cleared)"
                move_device(x, D.ROLLED_BACK, now, f"sent back to {back}: {reason}")

    # ------------------------------------------------------------------ devices that come online

    def _reconcile(self, s: Session, devices: dict[str, float] | None, now: float) -> None:
        q = select(db.Device).where(db.Device.online.is_(True))
        if devices is not None:
            if not devices:
                return
            q = q.where(db.Device.device_id.in_(devices))
        for dev in s.scalars(q):
            # A device that reported is told again even if it was told before: its retained announcement may
            # be gone (a broker restarted without persistence, a reinstalled gateway). Idempotent for the agent.
            self._reconcile_one(s, dev, now, devices.get(dev.device_id) if devices is not None else None)

    def _reconcile_matching(self, s: Session, selector: Selector, now: float) -> None:
        for dev in selector.devices(s):
            if dev.online:
                self._reconcile_one(s, dev, now)

    def _reconcile_one(self, s: Session, dev: db.Device, now: float, reported_at: float | None = None) -> None:
        """Announce the device's current model if it runs another and was not told so — or was told before it
        reported (``reported_at``, hub clock) that it still runs another."""
        target = current_target(s, dev)
        if target is None or dev.model_version == target.version:
            return
        told = s.get(db.DeviceTarget, dev.device_id)
        if (told is not None and (told.version, told.rollout_id) == (target.version, target.rollout_id)
                and (reported_at is None or told.announced_at >= reported_at)):
            return
        bundle = s.get(db.Bundle, target.bundle_id)
        if bundle is None:
            return
        log.info("%s runs v%s: announcing its current model v%d (rollout %d)", dev.device_id, dev.model_version,
                 target.version, target.rollout_id)
        self.announcer.to_device(s, dev.device_id, archive_of(s, bundle), target.rollout_id, now)


def _quantization(s: Session, r: db.Rollout) -> str | None:
    b = s.get(db.Bundle, r.bundle_id)
    return b.quantization if b else None
