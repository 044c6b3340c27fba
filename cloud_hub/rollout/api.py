"""What other code calls: start a rollout (intent only), operator commands, which model a device should
run, and the read queries the CLI prints.  `serve`'s engine (``engine.py``) carries the intent out."""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud_hub import db
from cloud_hub.db.rollouts import DeviceRolloutState, RolloutCommand, RolloutState
from cloud_hub.home import HubHome
from cloud_hub.rollout.states import OPEN, ROLLOUT_TRANSITIONS, move_rollout
from cloud_hub.rollout.waves import Gates, Selector, assign_waves, parse_phases

D = DeviceRolloutState


class RolloutError(ValueError):
    """An operator mistake (unknown bundle or rollout, a command the rollout's state does not allow)."""


def _session(where: HubHome | Session) -> AbstractContextManager[Session]:
    return where.sessions()() if isinstance(where, HubHome) else nullcontext(where)


def bundle_for(s: Session, version: int, quantization: str | None = None) -> db.Bundle | None:
    """The bundle of ``version`` in ``quantization`` if there is one, else any bundle of it (newest)."""
    q = select(db.Bundle).where(db.Bundle.version == version).order_by(db.Bundle.id.desc())
    if quantization is not None:
        exact = s.scalar(q.where(db.Bundle.quantization == quantization))
        if exact is not None:
            return exact
    return s.scalars(q).first()


def start_rollout(where: HubHome | Session, version: int, selector: Selector | None = None,
                  phases: Sequence[int] | str = (100,), gates: Gates | None = None,
                  quantization: str = "int8") -> int:
    """Record a staged rollout of ``version`` to the devices ``selector`` matches; returns its id.

    Only intent is written (devices queued in waves); `serve` announces, watches and judges.  Open
    rollouts sharing devices with this one are superseded.  With a HubHome it commits; with a Session
    the caller commits.  Raises LookupError if the bundle is not exported.
    """
    selector = selector or Selector()
    gates = gates or Gates()
    plan = parse_phases(phases)
    with _session(where) as s:
        bundle = s.scalar(select(db.Bundle).where(db.Bundle.version == version, db.Bundle.quantization == quantization))
        if bundle is None:
            raise LookupError(f"no {quantization} bundle for version {version}: run `cloud-hub export --model {version}`")
        now = time.time()
        devices = selector.devices(s)
        ids = {d.device_id for d in devices}
        for other in s.scalars(select(db.Rollout).where(db.Rollout.state.in_(OPEN))):
            shared = s.scalar(select(db.RolloutDevice.id).where(db.RolloutDevice.rollout_id == other.id,
                                                                db.RolloutDevice.device_id.in_(ids)).limit(1))
            if shared is not None:
                move_rollout(other, RolloutState.SUPERSEDED, now, "superseded by a later rollout")
        rollout = db.Rollout(bundle_id=bundle.id, version=version, state=RolloutState.RUNNING,
                             selector=selector.to_json(), phases=plan, wait_s=gates.wait_s,
                             max_failure=gates.max_failure, max_anomaly_increase=gates.max_anomaly_increase,
                             on_gate_failure=gates.on_failure.value, wave=0, wave_started_at=now, updated_at=now)
        s.add(rollout)
        s.flush()
        for dev, wave in zip(devices, assign_waves(len(devices), plan), strict=True):
            s.add(db.RolloutDevice(rollout_id=rollout.id, device_id=dev.device_id, wave=wave, state=D.QUEUED,
                                   previous_version=dev.model_version, updated_at=now))
        if isinstance(where, HubHome):
            s.commit()
        return rollout.id


def request(where: HubHome | Session, rollout_id: int, command: RolloutCommand) -> db.Rollout:
    """Write an operator command for `serve` to carry out; refuses one the rollout's state cannot take."""
    target = {RolloutCommand.PAUSE: RolloutState.PAUSED, RolloutCommand.RESUME: RolloutState.RUNNING,
              RolloutCommand.ABORT: RolloutState.ABORTED, RolloutCommand.ROLLBACK: RolloutState.ROLLED_BACK}[command]
    with _session(where) as s:
        rollout = s.get(db.Rollout, rollout_id)
        if rollout is None:
            raise RolloutError(f"no rollout {rollout_id}: see `cloud-hub rollout status`")
        if target not in ROLLOUT_TRANSITIONS[rollout.state]:
            raise RolloutError(f"rollout {rollout_id} is {rollout.state.value}: cannot {command.value} it")
        rollout.command = command
        if isinstance(where, HubHome):
            s.commit()
        return rollout


@dataclass(frozen=True)
class Target:
    version: int
    bundle_id: int
    rollout_id: int


def current_target(s: Session, dev: db.Device) -> Target | None:
    """The model ``dev`` should run now, and the rollout that says so.

    In an open rollout that reached it: that rollout's version (its previous one if it failed there or was
    sent back).  Otherwise: the newest completed rollout whose selector matches the device (its group's,
    profile's or tag's current model).  None: no rollout has an opinion.
    """
    row = s.execute(select(db.RolloutDevice, db.Rollout).join(db.Rollout, db.Rollout.id == db.RolloutDevice.rollout_id)
                    .where(db.RolloutDevice.device_id == dev.device_id, db.Rollout.state.in_(OPEN))
                    .order_by(db.Rollout.id.desc()).limit(1)).first()
    if row is not None:
        rd, rollout = row
        if rd.state in (D.SENT, D.VERIFIED, D.ACTIVATED, D.HEALTHY, D.TIMED_OUT):
            return Target(rollout.version, rollout.bundle_id, rollout.id)
        if rd.state in (D.FAILED, D.ROLLED_BACK) and rd.previous_version is not None:
            prev = bundle_for(s, rd.previous_version)
            return Target(rd.previous_version, prev.id, rollout.id) if prev else None
    for rollout in s.scalars(select(db.Rollout).where(db.Rollout.state == RolloutState.COMPLETED)
                             .order_by(db.Rollout.id.desc())):
        if Selector.from_json(rollout.selector).matches(dev):
            return Target(rollout.version, rollout.bundle_id, rollout.id)
    return None


def current_model_for(where: HubHome | Session, device: str) -> int | None:
    """The model version ``device`` should run now (see :func:`current_target`); None if none is decided."""
    with _session(where) as s:
        dev = s.get(db.Device, device)
        target = current_target(s, dev) if dev is not None else None
        return target.version if target else None


# ------------------------------------------------------------------------------------------- read side


@dataclass
class RolloutView:
    rollout: db.Rollout
    devices: list[db.RolloutDevice] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.rollout.state not in OPEN

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in self.devices:
            out[d.state.value] = out.get(d.state.value, 0) + 1
        return out


def views(where: HubHome | Session, rollout_id: int | None = None, limit: int = 5) -> list[RolloutView]:
    """The newest rollouts (or one), with their devices by wave and id."""
    with _session(where) as s:
        q = select(db.Rollout).order_by(db.Rollout.id.desc()).limit(limit)
        if rollout_id is not None:
            q = select(db.Rollout).where(db.Rollout.id == rollout_id)
        out = []
        for r in s.scalars(q):
            rows = list(s.scalars(select(db.RolloutDevice).where(db.RolloutDevice.rollout_id == r.id)
                                  .order_by(db.RolloutDevice.wave, db.RolloutDevice.device_id)))
            out.append(RolloutView(r, rows))
        return out
