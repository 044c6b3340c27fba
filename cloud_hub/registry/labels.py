"""Operator feedback on anomaly events: true or false positive, with a note, when and who.

:func:`label_anomaly` is the one way a label is written (the CLI and the dashboard both call it).  A
relabel adds a row and marks the previous one not current, so the history stays.  Labels feed the retrain
loop (:mod:`cloud_hub.registry.retrain`): false-positive stretches become normal training data, true
positives are excluded from training and are what a challenger must still catch.
"""

from __future__ import annotations

import getpass
import time
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cloud_hub import db
from cloud_hub.db import LabelKind
from cloud_hub.db.queries import LabelledAnomaly  # noqa: F401 - the listing lives with the shared queries
from cloud_hub.db.queries import anomalies as list_anomalies  # noqa: F401

NOTE_MAX = 1000
WHO_MAX = 64


class LabelError(ValueError):
    """A label that cannot be stored (unknown anomaly id, unknown label, note too long)."""


class UnknownAnomaly(LabelError, LookupError):
    pass


def _operator() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return ""


def label_anomaly(session: Session, anomaly_id: int, label: LabelKind | str, note: str | None = None,
                  by: str | None = None) -> db.AnomalyLabel:
    """Store ``label`` for anomaly event ``anomaly_id`` (its ``anomaly_events.id``) and commit.

    ``by`` names the operator (the dashboard passes its login; default: the OS user running the CLI).
    Raises :class:`UnknownAnomaly` for an id that does not exist and :class:`LabelError` for a bad label
    or an over-long note; nothing is written then.
    """
    try:
        kind = LabelKind(label)
    except ValueError:
        raise LabelError(f"unknown label {label!r}; use one of {', '.join(k.value for k in LabelKind)}") from None
    note = (note or "").strip()
    if len(note) > NOTE_MAX:
        raise LabelError(f"note is {len(note)} characters; at most {NOTE_MAX}")
    who = (by if by is not None else _operator())[:WHO_MAX]
    if session.get(db.AnomalyEvent, anomaly_id) is None:
        raise UnknownAnomaly(f"no anomaly event with id {anomaly_id} (see `cloud-hub anomalies list`)")
    session.execute(update(db.AnomalyLabel).where(db.AnomalyLabel.anomaly_id == anomaly_id,
                                                  db.AnomalyLabel.current.is_(True)).values(current=False))
    row = db.AnomalyLabel(anomaly_id=anomaly_id, label=kind, note=note, labelled_at=time.time(), labelled_by=who,
                          current=True)
    session.add(row)
    session.commit()
    return row


def label_history(session: Session, anomaly_id: int) -> list[db.AnomalyLabel]:
    """Every label an anomaly was given, oldest first."""
    return list(session.scalars(select(db.AnomalyLabel).where(db.AnomalyLabel.anomaly_id == anomaly_id)
                                .order_by(db.AnomalyLabel.id)))


@dataclass(frozen=True)
class LabelledStretch:
    """A labelled event as a time span on one device (for training-data selection and evaluation)."""

    device_id: str
    ts: float
    label: LabelKind


def labelled_events(session: Session, devices: list[str] | None = None) -> list[LabelledStretch]:
    """The current label of every labelled event (optionally only on ``devices``)."""
    query = (select(db.AnomalyEvent.device_id, db.AnomalyEvent.ts, db.AnomalyLabel.label)
             .join(db.AnomalyLabel, db.AnomalyLabel.anomaly_id == db.AnomalyEvent.id)
             .where(db.AnomalyLabel.current.is_(True)))
    if devices is not None:
        query = query.where(db.AnomalyEvent.device_id.in_(devices))
    return [LabelledStretch(d, float(ts), LabelKind(lab)) for d, ts, lab in session.execute(query).all()]
