"""What a rollout targets and how it is judged: selectors, phases (waves), gates and their verdicts.

Pure functions over rows: the engine (``engine.py``) decides when to call them.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cloud_hub import db
from cloud_hub.db.rollouts import DeviceRolloutState
from cloud_hub.rollout.states import FAILURES
from shared.schema import doc


class GateAction(enum.StrEnum):
    ABORT = "abort"  # send the wave back to its previous models and stop
    PAUSE = "pause"  # stop sending; the operator resumes, aborts or rolls back


@dataclass(frozen=True)
class Selector:
    """Which devices a rollout targets: all provisioned-or-seen, not revoked devices, narrowed by at most
    one of group, profile or tag."""

    group: str | None = doc("Devices of this group.", default=None)
    profile: str | None = doc("Devices with this firmware profile.", default=None)
    tag: tuple[str, str] | None = doc("Devices with this tag key = value.", default=None)

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.group, self.profile, self.tag)) > 1:
            raise ValueError("choose at most one of group, profile and tag")

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {}
        if self.group is not None:
            out["group"] = self.group
        if self.profile is not None:
            out["profile"] = self.profile
        if self.tag is not None:
            out["tag"] = list(self.tag)
        return out

    @classmethod
    def from_json(cls, d: dict[str, object]) -> Selector:
        tag = d.get("tag")
        return cls(group=d.get("group"), profile=d.get("profile"),  # type: ignore[arg-type]
                   tag=(str(tag[0]), str(tag[1])) if isinstance(tag, list) else None)

    def matches(self, dev: db.Device) -> bool:
        if dev.revoked_at is not None:
            return False
        if self.group is not None:
            return dev.group == self.group
        if self.profile is not None:
            return dev.profile == self.profile
        if self.tag is not None:
            return (dev.tags or {}).get(self.tag[0]) == self.tag[1]
        return True

    def describe(self) -> str:
        if self.group is not None:
            return f"group {self.group}"
        if self.profile is not None:
            return f"profile {self.profile}"
        if self.tag is not None:
            return f"tag {self.tag[0]}={self.tag[1]}"
        return "every device"

    def devices(self, s: Session) -> list[db.Device]:
        """Matching devices, by id."""
        return [d for d in s.scalars(select(db.Device).order_by(db.Device.device_id)) if self.matches(d)]


@dataclass(frozen=True)
class Gates:
    """When a wave may be followed by the next one."""

    wait_s: float = doc("Longest a device may take from announcement to passing the agent's probation "
                        "(then it counts as timed out).", default=600.0)
    max_failure: float = doc("Largest fraction of a wave that may fail, roll back or time out.", default=0.1)
    max_anomaly_increase: float | None = doc(
        "Largest rise of the anomaly rate of the wave's devices under the new model over the same devices under "
        "their previous model: flagged windows per scored window from the agents' telemetry (events per scored "
        "reading for agents that do not report flagged windows); None = not checked.", default=None)
    on_failure: GateAction = doc("What a tripped gate does.", default=GateAction.ABORT)

    def __post_init__(self) -> None:
        if self.wait_s <= 0 or not 0 <= self.max_failure <= 1:
            raise ValueError("wait must be > 0 and max failure within [0, 100%]")
        if self.max_anomaly_increase is not None and not 0 <= self.max_anomaly_increase <= 1:
            raise ValueError("max anomaly-rate increase must be within [0, 1] (a difference of rates)")


def parse_phases(text: str | Sequence[int]) -> list[int]:
    """``"5,25,100"`` → [5, 25, 100]: increasing cumulative percentages ending at 100."""
    try:
        phases = [int(p) for p in (text.split(",") if isinstance(text, str) else text)]
    except ValueError:
        raise ValueError(f"phases {text!r}: expected comma-separated percentages such as 5,25,100") from None
    if not phases or phases[-1] != 100 or any(not 0 < p <= 100 for p in phases) or phases != sorted(set(phases)):
        raise ValueError(f"phases {text!r}: increasing percentages in (0, 100], the last one 100")
    return phases


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def parse_duration(text: str) -> float:
    """``"10m"``, ``"30s"``, ``"1.5h"``, ``"45"`` (seconds) → seconds."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"duration {text!r}: expected a number with an optional unit ms, s, m or h")
    scale = {"ms": 0.001, "s": 1.0, None: 1.0, "m": 60.0, "h": 3600.0}[m.group(2)]
    return float(m.group(1)) * scale


def parse_fraction(text: str) -> float:
    """``"10%"`` → 0.1; ``"0.1"`` → 0.1."""
    t = text.strip()
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise ValueError(f"{text!r}: expected a fraction such as 0.1 or a percentage such as 10%") from None
    if not 0 <= value <= 1:
        raise ValueError(f"{text!r}: must be within 0 and 100%")
    return value


def assign_waves(n: int, phases: Sequence[int]) -> list[int]:
    """Wave index for each of ``n`` devices (in order): wave i ends at floor(phase_i% of n) devices, and
    every wave gets at least one device while devices remain (5% of 3 devices is one device, not none)."""
    waves: list[int] = []
    for i, pct in enumerate(phases):
        end = max(math.floor(n * pct / 100 + 1e-9), len(waves) + 1)
        waves.extend([i] * (min(end, n) - len(waves)))
    return waves


# ------------------------------------------------------------------------------------------- gates


@dataclass
class GateResult:
    passed: bool
    reason: str
    waiting: bool = False  # not enough data yet to judge


@dataclass
class WaveCounts:
    total: int = 0
    by_state: dict[DeviceRolloutState, int] = field(default_factory=dict)

    @property
    def failures(self) -> int:
        return sum(n for st, n in self.by_state.items() if st in FAILURES)


def count(states: Iterable[DeviceRolloutState]) -> WaveCounts:
    c = WaveCounts()
    for st in states:
        c.total += 1
        c.by_state[st] = c.by_state.get(st, 0) + 1
    return c


def failure_gate(counts: WaveCounts, gates: Gates) -> GateResult:
    if counts.total == 0:
        return GateResult(True, "empty wave")
    frac = counts.failures / counts.total
    detail = ", ".join(f"{n} {st.value}" for st, n in sorted(counts.by_state.items()) if st in FAILURES)
    if frac > gates.max_failure:
        return GateResult(False, f"{counts.failures}/{counts.total} devices failed ({detail}): "
                                 f"{frac:.0%} > max failure {gates.max_failure:.0%}")
    return GateResult(True, f"{counts.failures}/{counts.total} failed")


def scored_readings(s: Session, device: str, version: int, before: float | None = None,
                    after: float | None = None) -> int:
    """Readings ``device`` scored with ``version``, from its heartbeats' counters (a restart resets the
    counter: a drop counts the new value from zero)."""
    q = select(db.Heartbeat.readings_scored, db.Heartbeat.model_version).where(db.Heartbeat.device_id == device)
    if before is not None:
        q = q.where(db.Heartbeat.received_at <= before)
    if after is not None:
        q = q.where(db.Heartbeat.received_at >= after)
    total, prev = 0, None
    for scored, model in s.execute(q.order_by(db.Heartbeat.id)):
        if prev is not None and model == version:
            total += scored - prev if scored >= prev else scored
        prev = scored
    return total


def anomaly_events(s: Session, device: str, version: int, before: float | None = None,
                   after: float | None = None) -> int:
    q = select(func.count()).select_from(db.AnomalyEvent).where(db.AnomalyEvent.device_id == device,
                                                                 db.AnomalyEvent.model_version == version)
    if before is not None:
        q = q.where(db.AnomalyEvent.received_at <= before)
    if after is not None:
        q = q.where(db.AnomalyEvent.received_at >= after)
    return int(s.scalar(q) or 0)


class RateUnit(enum.StrEnum):
    WINDOWS = "flagged windows per scored window"  # the agents' telemetry: what the model decides per window
    EVENTS = "events per scored reading"  # older agents (no flagged counts): episodes, from events + heartbeats


@dataclass
class Rate:
    flagged: int = 0  # flagged windows, or anomaly events
    scored: int = 0  # scored windows, or scored readings

    @property
    def value(self) -> float:
        return self.flagged / self.scored if self.scored else 0.0

    def __str__(self) -> str:
        return f"{self.value:.4f} ({self.flagged}/{self.scored})"


def flagged_windows(s: Session, device: str, version: int, before: float | None = None,
                    after: float | None = None) -> Rate | None:
    """Windows ``device`` scored and flagged under ``version``, from its telemetry; None if it sent no
    flagged counts for that model (an agent older than the field)."""
    t = db.TelemetryRecord
    q = select(func.sum(t.flagged), func.sum(t.scored), func.count()).where(
        t.device_id == device, t.model_version == version, t.flagged.is_not(None))
    if before is not None:
        q = q.where(t.received_at <= before)
    if after is not None:
        q = q.where(t.received_at >= after)
    flagged, scored, n = s.execute(q).one()
    return Rate(int(flagged or 0), int(scored or 0)) if n else None


@dataclass
class DeviceRates:
    """One device under the new model (since it was sent) and its previous model (before)."""

    device: str
    unit: RateUnit
    new: Rate
    old: Rate

    @property
    def rise(self) -> float:
        return self.new.value - self.old.value


def device_rates(s: Session, row: db.RolloutDevice, version: int) -> DeviceRates:
    """Flagged-window rates when the device reported them for both models (or has no previous model), else
    its event rates: a continuously flagging model raises one long episode, which event counts hide."""
    assert row.sent_at is not None
    prev = row.previous_version
    new = flagged_windows(s, row.device_id, version, after=row.sent_at)
    old = flagged_windows(s, row.device_id, prev, before=row.sent_at) if prev is not None else Rate()
    if new is not None and old is not None:
        return DeviceRates(row.device_id, RateUnit.WINDOWS, new, old)
    new, old = Rate(), Rate()
    new.flagged = anomaly_events(s, row.device_id, version, after=row.sent_at)
    new.scored = scored_readings(s, row.device_id, version, after=row.sent_at)
    if prev is not None:
        old.flagged = anomaly_events(s, row.device_id, prev, before=row.sent_at)
        old.scored = scored_readings(s, row.device_id, prev, before=row.sent_at)
    return DeviceRates(row.device_id, RateUnit.EVENTS, new, old)


def anomaly_gate(s: Session, rows: Sequence[db.RolloutDevice], version: int, gates: Gates,
                 min_readings: int) -> GateResult:
    """The anomaly-rate rise of the wave's healthy devices: each device under ``version`` (since it was sent)
    against itself under its previous model (before), averaged over the wave weighted by what each scored
    under ``version``.  Waits until the wave scored ``min_readings`` under ``version``."""
    if gates.max_anomaly_increase is None:
        return GateResult(True, "")
    per_device = [device_rates(s, r, version) for r in rows
                  if r.state == DeviceRolloutState.HEALTHY and r.sent_at is not None]
    scored = sum(d.new.scored for d in per_device)
    if scored < min_readings:
        return GateResult(True, f"anomaly rate: only {scored} windows scored by v{version}", waiting=True)
    rise = sum(d.rise * d.new.scored for d in per_device) / scored
    parts = []
    for unit in RateUnit:
        group = [d for d in per_device if d.unit == unit]
        if group:
            new = Rate(sum(d.new.flagged for d in group), sum(d.new.scored for d in group))
            old = Rate(sum(d.old.flagged for d in group), sum(d.old.scored for d in group))
            parts.append(f"{unit.value} {new} vs previous {old} on {len(group)} device(s)")
    worst = max(per_device, key=lambda d: d.rise)
    text = (f"anomaly rate: {'; '.join(parts)}; rise {rise:.4f} (worst {worst.device} "
            f"{worst.new.value:.4f} vs {worst.old.value:.4f})")
    if rise > gates.max_anomaly_increase:
        return GateResult(False, f"{text} > {gates.max_anomaly_increase}")
    return GateResult(True, text)
