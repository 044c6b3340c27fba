"""Operator labels on anomaly events: one function for CLI and dashboard, history kept, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from cloud_hub import db
from cloud_hub.cli import main
from cloud_hub.cli.anomalies import parse_since
from cloud_hub.home import HubHome
from cloud_hub.registry import labels


def _event(device: str, ts: float, n: int) -> db.AnomalyEvent:
    return db.AnomalyEvent(device_id=device, event_id=f"e{n}", ts=ts, detected_at=ts, received_at=ts + 0.1,
                           score=2.0 + n, threshold=1.0, model_version=1, top_features=["temperature"])


@pytest.fixture
def home(tmp_path: Path) -> HubHome:
    h = HubHome(tmp_path / "hub")
    h.init()
    with h.sessions()() as s:
        s.add_all([_event("dev-a", 1000.0, 1), _event("dev-a", 2000.0, 2), _event("dev-b", 3000.0, 3)])
        s.commit()
    return h


def _ids(h: HubHome) -> dict[str, int]:
    with h.sessions()() as s:
        return {e.event_id: e.id for e in s.scalars(select(db.AnomalyEvent))}


def test_label_relabel_keeps_history_and_lists(home: HubHome) -> None:
    ids = _ids(home)
    with home.sessions()() as s:
        labels.label_anomaly(s, ids["e1"], db.LabelKind.FALSE_POSITIVE, "door opened", by="ana")
        labels.label_anomaly(s, ids["e1"], "true_positive", by="bo")  # relabel
        labels.label_anomaly(s, ids["e3"], "false_positive")
    with home.sessions()() as s:
        hist = labels.label_history(s, ids["e1"])
        assert [(h.label, h.labelled_by, h.current) for h in hist] == [
            (db.LabelKind.FALSE_POSITIVE, "ana", False), (db.LabelKind.TRUE_POSITIVE, "bo", True)]
        assert hist[0].note == "door opened" and hist[1].labelled_at >= hist[0].labelled_at
        listed = labels.list_anomalies(s)
        assert [r.event.event_id for r in listed] == ["e3", "e2", "e1"]  # newest first, one row per event
        assert [r.label.label if r.label else None for r in listed] == [
            db.LabelKind.FALSE_POSITIVE, None, db.LabelKind.TRUE_POSITIVE]
        assert [r.event.event_id for r in labels.list_anomalies(s, unlabelled=True)] == ["e2"]
        assert [r.event.event_id for r in labels.list_anomalies(s, device="dev-a", since=1500)] == ["e2"]
        assert [r.event.event_id for r in labels.list_anomalies(s, label=db.LabelKind.TRUE_POSITIVE)] == ["e1"]
        stretches = labels.labelled_events(s, ["dev-a"])
        assert stretches == [labels.LabelledStretch("dev-a", 1000.0, db.LabelKind.TRUE_POSITIVE)]


def test_bad_labels_are_refused_and_write_nothing(home: HubHome) -> None:
    ids = _ids(home)
    with home.sessions()() as s:
        with pytest.raises(labels.UnknownAnomaly, match="no anomaly event with id 9999"):
            labels.label_anomaly(s, 9999, "true_positive")
        with pytest.raises(labels.LabelError, match="unknown label 'maybe'"):
            labels.label_anomaly(s, ids["e1"], "maybe")
        with pytest.raises(labels.LabelError, match="at most 1000"):
            labels.label_anomaly(s, ids["e1"], "true_positive", note="x" * 1001)
    with home.sessions()() as s:
        assert s.scalar(select(func.count()).select_from(db.AnomalyLabel)) == 0


def test_cli_list_and_label(home: HubHome) -> None:
    runner = CliRunner()
    h = ["--home", str(home.path)]
    ids = _ids(home)
    out = runner.invoke(main, [*h, "anomalies", "label", str(ids["e2"]), "--false-positive", "--note", "fan test",
                               "--by", "ops"])
    assert out.exit_code == 0, out.output
    assert f"anomaly {ids['e2']}: false_positive — fan test" in out.output
    out = runner.invoke(main, [*h, "anomalies", "label", str(ids["e2"]), "--true-positive"])
    assert out.exit_code == 0 and "true_positive (was false_positive)" in out.output, out.output
    out = runner.invoke(main, [*h, "anomalies", "list", "--json"])
    rows = [json.loads(line) for line in out.output.splitlines()]
    assert [(r["event_id"], r["label"]) for r in rows] == [("e3", None), ("e2", "true_positive"), ("e1", None)]
    out = runner.invoke(main, [*h, "anomalies", "list", "--unlabelled", "--device", "dev-a", "--json"])
    assert [json.loads(line)["event_id"] for line in out.output.splitlines()] == ["e1"]
    out = runner.invoke(main, [*h, "anomalies", "list", "--since", "1970-01-01T00:40:00"])  # ts >= 2400
    assert out.exit_code == 0 and "dev-b" in out.output and "dev-a" not in out.output, out.output
    # errors: unknown id, no label given, a bad --since
    out = runner.invoke(main, [*h, "anomalies", "label", "424242", "--true-positive"])
    assert out.exit_code == 1 and "no anomaly event with id 424242" in out.output
    out = runner.invoke(main, [*h, "anomalies", "label", str(ids["e1"])])
    assert out.exit_code == 2 and "--true-positive or --false-positive" in out.output
    out = runner.invoke(main, [*h, "anomalies", "list", "--since", "yesterday-ish"])
    assert out.exit_code == 2 and "expected a duration ago" in out.output


def test_parse_since() -> None:
    assert parse_since("2h", now=10_000.0) == 10_000.0 - 7200
    assert parse_since("7d", now=1e6) == 1e6 - 7 * 86400
    assert parse_since("1700000000") == 1_700_000_000.0
    assert parse_since("2023-11-14T22:13:20") == 1_700_000_000.0
    assert parse_since("2023-11-14T23:13:20+01:00") == 1_700_000_000.0
