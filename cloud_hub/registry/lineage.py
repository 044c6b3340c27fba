"""Lineage of model versions: the data, settings and parent each was trained from, its held-out metrics,
and the bundles exported from it — so an operator can tell what a version is and how two differ."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud_hub import db
from cloud_hub.data import TrainingData


def data_summary(data: TrainingData) -> dict[str, Any]:
    """What a version was trained on: source, devices, time range, rows, and per-feature mean/std (the
    reference the data-drift trigger compares new readings with)."""
    stacked = np.concatenate(data.segments) if data.segments else np.empty((0, len(data.features)))
    with np.errstate(all="ignore"):
        mean = np.nanmean(stacked, axis=0) if len(stacked) else np.full(len(data.features), np.nan)
        std = np.nanstd(stacked, axis=0) if len(stacked) else np.full(len(data.features), np.nan)
    return {
        "source": data.source,
        "devices": list(data.devices),
        "start_ts": data.start_ts,
        "end_ts": data.end_ts,
        "rows": data.rows,
        "excluded_rows": data.excluded_rows,
        "fp_rows": data.fp_rows,
        "training_rows": int(len(stacked)),
        "segments": len(data.segments),
        "features": list(data.features),
        "feature_mean": [None if not np.isfinite(v) else float(v) for v in mean],
        "feature_std": [None if not np.isfinite(v) else float(v) for v in std],
    }


def holdout_metrics(scores: np.ndarray, flags: np.ndarray, threshold: float) -> dict[str, Any]:
    """Scores of the held-out recent slice (the last part of every training segment): how often the
    version flags normal data it did not train on, and how far its scores sit from the threshold."""
    s = np.asarray(scores, np.float64)
    if not len(s):
        return {"windows": 0}
    return {"windows": len(s), "flag_rate": float(np.mean(flags)), "threshold": float(threshold),
            "score_p50": float(np.quantile(s, 0.5)), "score_p99": float(np.quantile(s, 0.99)),
            "score_max": float(s.max())}


def record(session: Session, version: int, data: TrainingData, model: str, settings: dict[str, Any],
           metrics: dict[str, Any], parent: int | None = None, group: str = "") -> db.ModelLineage:
    """Add the lineage row of a just-trained version (the caller commits with the version's own row)."""
    row = db.ModelLineage(version=version, parent_version=parent, device_group=group, data=data_summary(data),
                          settings={"model": model, **settings}, metrics={"holdout": metrics},
                          created_at=time.time())
    session.add(row)
    return row


def add_metrics(session: Session, version: int, key: str, values: dict[str, Any]) -> None:
    """Store further metrics of a version (e.g. its challenger evaluation) under ``key``."""
    row = session.get(db.ModelLineage, version)
    if row is None:
        row = db.ModelLineage(version=version, created_at=time.time(), data={}, settings={}, metrics={})
        session.add(row)
    row.metrics = {**(row.metrics or {}), key: values}


@dataclass
class VersionView:
    """Everything the registry knows about one version."""

    version: db.ModelVersion
    lineage: db.ModelLineage | None
    bundles: list[db.Bundle]
    champion_of: list[str]  # groups whose champion it is ("" = the fleet default)


def _view(session: Session, mv: db.ModelVersion) -> VersionView:
    bundles = list(session.scalars(select(db.Bundle).where(db.Bundle.version == mv.version)
                                   .order_by(db.Bundle.quantization)))
    groups = list(session.scalars(select(db.Champion.device_group).where(db.Champion.version == mv.version)
                                  .order_by(db.Champion.device_group)))
    return VersionView(mv, session.get(db.ModelLineage, mv.version), bundles, groups)


def versions(session: Session, group: str | None = None) -> list[VersionView]:
    """Every version, newest first (optionally only those trained for ``group``)."""
    query = select(db.ModelVersion).order_by(db.ModelVersion.version.desc())
    if group is not None:
        query = query.join(db.ModelLineage, db.ModelLineage.version == db.ModelVersion.version).where(
            db.ModelLineage.device_group == group)
    return [_view(session, mv) for mv in session.scalars(query)]


class UnknownVersion(LookupError):
    pass


def version(session: Session, v: int) -> VersionView:
    mv = session.get(db.ModelVersion, v)
    if mv is None:
        raise UnknownVersion(f"model version {v} does not exist (see `cloud-hub models list`)")
    return _view(session, mv)


def flatten(view: VersionView) -> dict[str, Any]:
    """One flat mapping per version (``data.rows``, ``settings.epochs``, ``metrics.holdout.flag_rate``...),
    what `models show --json` prints and `models diff` compares."""
    out: dict[str, Any] = {"version": view.version.version, "model": view.version.name,
                           "created_at": view.version.created_at.isoformat(), "source": view.version.source,
                           "champion_of": view.champion_of}
    lin = view.lineage
    if lin is not None:
        out["parent_version"] = lin.parent_version
        out["group"] = lin.device_group

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}.{k}", v)
            else:
                out[prefix] = value

        walk("data", {k: v for k, v in (lin.data or {}).items() if k not in ("feature_mean", "feature_std")})
        walk("settings", lin.settings or {})
        walk("metrics", lin.metrics or {})
    for b in view.bundles:
        out[f"bundles.{b.quantization}"] = {"size": b.size, "profile": b.profile or None,
                                            "score_pearson": (b.agreement or {}).get("score_pearson")}
    return out


def diff(a: VersionView, b: VersionView) -> list[tuple[str, Any, Any]]:
    """(key, value in a, value in b) for every key whose value differs, keys in a stable order."""
    fa, fb = flatten(a), flatten(b)
    keys = list(dict.fromkeys([*fa, *fb]))
    return [(k, fa.get(k), fb.get(k)) for k in keys if fa.get(k) != fb.get(k)]
