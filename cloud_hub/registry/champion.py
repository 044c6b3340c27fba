"""The champion of each device group: the version that group should run and challengers must beat.

Group "" is the fleet default (devices without a group, and `retrain` without ``--group``).  A group
without a champion of its own falls back to the fleet default, then to the newest version.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cloud_hub import db
from cloud_hub.registry.lineage import UnknownVersion


class ChampionSource(enum.StrEnum):
    GROUP = "group"  # the group's own champion
    FLEET = "fleet"  # no champion for the group: the fleet default's
    NEWEST = "newest"  # no champion at all yet: the newest version


@dataclass(frozen=True)
class CurrentChampion:
    version: int
    source: ChampionSource


def champion(session: Session, group: str = "") -> CurrentChampion | None:
    """The version ``group`` runs as champion (with where that came from), or None without any version."""
    row = session.get(db.Champion, group)
    if row is not None:
        return CurrentChampion(row.version, ChampionSource.GROUP)
    if group:
        fleet = session.get(db.Champion, "")
        if fleet is not None:
            return CurrentChampion(fleet.version, ChampionSource.FLEET)
    newest = session.scalar(select(func.max(db.ModelVersion.version)))
    return CurrentChampion(int(newest), ChampionSource.NEWEST) if newest is not None else None


def champions(session: Session) -> list[db.Champion]:
    return list(session.scalars(select(db.Champion).order_by(db.Champion.device_group)))


def set_champion(session: Session, version: int, group: str = "", reason: str = "") -> db.Champion:
    """Make ``version`` the champion of ``group`` (the caller commits)."""
    if session.get(db.ModelVersion, version) is None:
        raise UnknownVersion(f"model version {version} does not exist (see `cloud-hub models list`)")
    row = session.get(db.Champion, group) or db.Champion(device_group=group)
    row.version, row.promoted_at, row.reason = version, time.time(), reason[:500]
    session.add(row)
    return row


def promote(session: Session, version: int, group: str = "", reason: str = "manual promotion") -> db.RetrainDecision:
    """An operator's promotion: set the champion and record it as a decision (commits)."""
    before = champion(session, group)
    set_champion(session, version, group, reason)
    now = time.time()
    decision = db.RetrainDecision(device_group=group, trigger=db.RetrainTrigger.PROMOTE, trigger_detail={},
                                  started_at=now, finished_at=now, outcome=db.RetrainOutcome.PROMOTED,
                                  champion_version=before.version if before else None, challenger_version=version,
                                  margin=0.0, numbers={}, detail=reason[:1000])
    session.add(decision)
    session.commit()
    return decision
