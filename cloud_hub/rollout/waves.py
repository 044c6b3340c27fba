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
        "Largest rise of the anomaly rate (events per scored reading) of the wave's devices under the new model "
        "over their previous model; None = not checked.", default=None)
    on_failure: GateAction = doc("What a tripped gate does.", default=GateAction.ABORT)

    def __post_init__(self) -> None:
        if self.wait_s <= 0 or not 0 <= self.max_failure <= 1:
            raise ValueError("wait must be > 0 and max failure within [0, 100%]")
        if self.max_anomaly_increase is not None and not 0 <= self.max_anomaly_increase <= 1:
            raise ValueError("max anomaly-rate increase must be within [0, 1] (events per scored reading)")


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


@dataclass
class Rate:
    events: int = 0
    readings: int = 0

    @property
    def value(self) -> float:
        return self.events / self.readings if self.readings else 0.0


def anomaly_gate(s: Session, rows: Sequence[db.RolloutDevice], version: int, gates: Gates,
                 min_readings: int) -> GateResult:
    """Anomaly rate of the wave's healthy devices under ``version`` (since it was sent) against the same
    devices under their previous model (before it was sent)."""
    if gates.max_anomaly_increase is None:
        return GateResult(True, "")
    new, old = Rate(), Rate()
    for r in rows:
        if r.state != DeviceRolloutState.HEALTHY or r.sent_at is None:
            continue
        new.events += anomaly_events(s, r.device_id, version, after=r.sent_at)
        new.readings += scored_readings(s, r.device_id, version, after=r.sent_at)
        if r.previous_version is not None:
            old.events += anomaly_events(s, r.device_id, r.previous_version, before=r.sent_at)
            old.readings += scored_readings(s, r.device_id, r.previous_version, before=r.sent_at)
    if new.readings < min_readings:
        return GateResult(True, f"anomaly rate: only {new.readings} readings scored by v{version}", waiting=True)
    rise = new.value - old.value
    text = (f"anomaly rate {new.value:.4f} ({new.events}/{new.readings}) vs previous {old.value:.4f} "
            f"({old.events}/{old.readings})")
    if rise > gates.max_anomaly_increase:
        return GateResult(False, f"{text}: rise {rise:.4f} > {gates.max_anomaly_increase}")
    return GateResult(True, text)
