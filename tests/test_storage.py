"""Storage on SQLite and a real PostgreSQL: Alembic migrations (one head, the ORM's exact schema,
round trips, a pre-Alembic hub), schema checks in the CLI, idempotent inserts under redelivery, and the
read queries the CLI and dashboard share."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner
from sqlalchemy import func, inspect, select, text

from cloud_hub import db
from cloud_hub.cli import main
from cloud_hub.db import migrate
from cloud_hub.home import HubHome
from cloud_hub.ingest import store
from cloud_hub.ingest.batching import Inbound
from shared import protocol as p


def _diff(url: str) -> list[object]:
    with db.engine_for(url).connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        return list(compare_metadata(ctx, db.Base.metadata))


def _tables(url: str) -> set[str]:
    with db.engine_for(url).connect() as conn:
        return set(inspect(conn).get_table_names())


def test_migrations_have_one_head_and_a_linear_chain() -> None:
    scripts = migrate.scripts()
    assert len(scripts.get_heads()) == 1, "two revisions share a parent: re-chain the newer one"
    chain = list(scripts.walk_revisions())  # head → base
    assert chain[-1].revision == migrate.BASELINE and chain[-1].down_revision is None
    for rev in chain:
        assert Path(rev.path).name.startswith(f"{rev.revision}_"), f"{rev.path}: file named after its revision"


def test_upgrade_from_empty_is_exactly_the_orm_schema(database_url: str) -> None:
    engine = db.engine_for(database_url)
    assert migrate.status(engine).state == migrate.SchemaState.EMPTY
    assert migrate.upgrade(engine) == (None, migrate.head())
    assert _diff(database_url) == []
    assert migrate.status(engine).state == migrate.SchemaState.CURRENT
    assert migrate.upgrade(engine) == (migrate.head(), migrate.head())  # a second run changes nothing


def test_downgrade_and_upgrade_round_trip_step_by_step(database_url: str) -> None:
    engine = db.engine_for(database_url)
    migrate.upgrade(engine)
    revisions = [r.revision for r in migrate.scripts().walk_revisions()]  # head → base
    for rev in revisions:  # one step down at a time, each downgrade must run
        before, _after = migrate.downgrade(engine, "-1")
        assert before == rev
    assert _tables(database_url) <= {"alembic_version"}
    for rev in reversed(revisions):  # and one step up at a time
        migrate.upgrade(engine, rev)
    assert _diff(database_url) == []


def _pre_alembic_hub(tmp_path: Path) -> HubHome:
    """A hub as the release before Alembic left it: the baseline tables (create_all), no revision table."""
    home = HubHome(tmp_path / "old-hub")
    home.init()
    engine = home.engine()
    migrate.downgrade(engine, "base")
    with engine.begin() as conn:
        command.upgrade(migrate.alembic_config(conn), migrate.BASELINE)
        conn.execute(text("DROP TABLE alembic_version"))
        conn.execute(text("INSERT INTO devices (device_id, first_seen, last_seen, online, model_state, "
                          "agent_version, runtime, last_error, readings_scored, profile, device_group, tags, "
                          "password_hash, mqtt_client_id) VALUES ('gw-old', 1, 2, 0, 'none', '', '', '', 7, '', "
                          "'', '{}', '', '')"))
        conn.execute(text("INSERT INTO model_versions (version, name, created_at, source, artifacts_dir, training) "
                          "VALUES (1, 'ae-lstm', '2026-01-01 00:00:00', 'x.csv', '/m/1', '{}')"))
        conn.execute(text("INSERT INTO bundles (version, quantization, path, sha256, size, agreement, created_at) "
                          "VALUES (1, 'int8', '/b/1.tar.gz', 'ab', 10, '{}', '2026-01-01 00:00:00')"))
    return home


def test_pre_alembic_hub_is_refused_until_upgraded_then_keeps_its_data(tmp_path: Path) -> None:
    home = _pre_alembic_hub(tmp_path)
    assert migrate.status(home.engine()).state == migrate.SchemaState.PRE_ALEMBIC
    runner = CliRunner()
    refused = runner.invoke(main, ["--home", str(home.path), "devices", "list"])
    assert refused.exit_code == 1 and "cloud-hub db upgrade" in refused.output, refused.output
    done = runner.invoke(main, ["--home", str(home.path), "db", "upgrade"])
    assert done.exit_code == 0, done.output
    assert f"to {migrate.head()}" in done.output
    assert _diff(home.database_url()) == []
    with home.sessions()() as s:
        assert s.get(db.Device, "gw-old").readings_scored == 7  # type: ignore[union-attr]
        assert s.scalar(select(db.Bundle.path)) == "/b/1.tar.gz"  # later revisions' new columns filled in
    current = runner.invoke(main, ["--home", str(home.path), "db", "current"])
    assert current.exit_code == 0 and "(current)" in current.output, current.output


def test_a_foreign_database_is_not_stamped(tmp_path: Path) -> None:
    home = HubHome(tmp_path / "hub")
    home.init()
    engine = home.engine()
    migrate.downgrade(engine, "base")
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))
        conn.execute(text("CREATE TABLE devices (device_id VARCHAR(64) PRIMARY KEY)"))
    with pytest.raises(migrate.DatabaseSchemaError, match="lacks"):
        migrate.upgrade(engine)
    assert migrate.status(engine).state == migrate.SchemaState.PRE_ALEMBIC  # nothing half-done


def test_cli_names_the_fix_for_an_old_or_newer_schema(tmp_path: Path) -> None:
    home = HubHome(tmp_path / "hub")
    home.init()
    runner = CliRunner()
    migrate.downgrade(home.engine(), "base")
    out = runner.invoke(main, ["--home", str(home.path), "events"])
    assert out.exit_code == 1 and "cloud-hub db upgrade" in out.output, out.output
    assert runner.invoke(main, ["--home", str(home.path), "db", "current"]).exit_code == 1
    assert runner.invoke(main, ["--home", str(home.path), "db", "upgrade"]).exit_code == 0
    with home.engine().begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'f00d'"))
    db.dispose_engines()  # a new process: the schema is checked again
    out = runner.invoke(main, ["--home", str(home.path), "events"])
    assert out.exit_code == 1 and "newer than this cloud-hub" in out.output, out.output
    with pytest.raises(migrate.DatabaseSchemaError, match="newer edgesentry"):
        migrate.upgrade(home.engine())


def test_engine_is_created_once_per_hub_home(tmp_path: Path) -> None:
    HubHome(tmp_path / "hub").init()
    HubHome(tmp_path / "other").init()
    assert HubHome(tmp_path / "hub").engine() is HubHome(tmp_path / "hub").engine()
    assert HubHome(tmp_path / "hub").engine() is not HubHome(tmp_path / "other").engine()


def test_workers_starting_together_migrate_postgresql_once(postgres_url: str) -> None:
    """`serve` workers all upgrade at start: the advisory lock makes the others wait and find it done."""
    engines = [db.make_engine(postgres_url) for _ in range(4)]
    errors: list[BaseException] = []

    def run(engine: object) -> None:
        try:
            migrate.upgrade(engine)  # type: ignore[arg-type]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for e in engines:
        e.dispose()
    assert errors == []
    assert _diff(postgres_url) == []


def _item(channel: p.Channel, message: object, device: str) -> Inbound:
    return Inbound(channel, device, message, time.time(), 0, 0)


def test_redelivered_messages_are_stored_once(database_url: str) -> None:
    engine = db.engine_for(database_url)
    migrate.upgrade(engine)
    sessions = db.session_factory(engine)
    events = [_item(p.Channel.ANOMALY, p.AnomalyEvent(
        v=p.PROTOCOL_VERSION, event_id=uuid.uuid4().hex, device=f"gw-{i % 3}", ts=1.7e9 + i, detected_at=1.7e9 + i,
        score=5.0, threshold=1.0, model_version=1, top_features=["temp"], attribution={"temp": 0.9},
        likelihood=0.99), f"gw-{i % 3}") for i in range(30)]
    sync = _item(p.Channel.SYNC, p.SyncBatch(v=p.PROTOCOL_VERSION, device="gw-0", batch_id="b1", features=["a"],
                                             rows=[[1.7e9 + i, float(i)] for i in range(5)], flags=[0] * 5), "gw-0")
    status = _item(p.Channel.STATUS, p.Status(v=p.PROTOCOL_VERSION, device="gw-1", ts=1.7e9,
                                              state=p.AgentState.ONLINE, model_state=p.ModelState.COMMITTED,
                                              model_version=1, msg_id="s1"), "gw-1")
    telemetry = _item(p.Channel.TELEMETRY, p.Telemetry(v=p.PROTOCOL_VERSION, device="gw-2", ts=1.7e9, interval_s=10.0,
                                                       scored=5, score_mean=0.5, score_max=0.9,
                                                       readings_scored_total=50, msg_id="t1"), "gw-2")
    batch = [*events, sync, status, telemetry]
    with sessions() as s:
        first = store.write(s, batch)
        s.commit()
    # The broker redelivers everything (hub died before PUBACK), some twice within one batch.
    with sessions() as s:
        again = store.write(s, batch + events[:5])
        s.commit()
    assert first.stored == {"anomaly": 30, "sync": 1, "status": 1, "telemetry": 1}
    assert sum(again.stored.values()) == 0
    assert again.duplicates == {"anomaly": 35, "sync": 1, "status": 1, "telemetry": 1}
    # Every durable id is acknowledged again so the agents can delete them.
    assert sorted(again.acked) == ["gw-0", "gw-1", "gw-2"]
    assert sum(len(set(ids)) for ids in again.acked.values()) == 33
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(db.AnomalyEvent)) == 30
        assert s.scalar(select(func.count()).select_from(db.SyncBatch)) == 1
        assert s.scalar(select(func.count()).select_from(db.StatusChange)) == 1
        assert s.scalar(select(func.count()).select_from(db.TelemetryRecord)) == 1
        assert s.scalar(select(func.count()).select_from(db.Device)) == 3
        stored = s.scalars(select(db.AnomalyEvent).where(db.AnomalyEvent.event_id == events[0].message.event_id)).one()
    # Every column lands where it belongs (rows go to the driver as positional tuples).
    assert (stored.device_id, stored.ts, stored.score, stored.top_features, stored.attribution, stored.likelihood) == (
        "gw-0", 1.7e9, 5.0, ["temp"], {"temp": 0.9}, 0.99)


def test_init_with_a_postgresql_url_puts_the_hub_there(tmp_path: Path, postgres_url: str) -> None:
    runner = CliRunner()
    out = runner.invoke(main, ["--home", str(tmp_path / "hub"), "init", "--database-url", postgres_url])
    assert out.exit_code == 0, out.output
    home = HubHome(tmp_path / "hub")
    assert home.database_url() == postgres_url
    assert not (tmp_path / "hub" / "hub.db").exists()
    assert _diff(postgres_url) == []
    assert runner.invoke(main, ["--home", str(home.path), "devices", "list"]).exit_code == 0


def test_shared_queries(database_url: str) -> None:
    """What `devices list/show`, `anomalies list`, `events`, retrain's data selection and a fleet overview read."""
    from cloud_hub.db import queries
    from cloud_hub.registry.labels import label_anomaly

    engine = db.engine_for(database_url)
    migrate.upgrade(engine)
    sessions = db.session_factory(engine)
    items = [_item(p.Channel.ANOMALY, p.AnomalyEvent(
        v=p.PROTOCOL_VERSION, event_id=f"e{i}", device=dev, ts=1000.0 + i, detected_at=1000.0 + i, score=5.0,
        threshold=1.0, model_version=1, top_features=["temp"], attribution={}, likelihood=0.9), dev)
        for i, dev in enumerate(["gw-a", "gw-b", "gw-a", "gw-c"])]
    items += [_item(p.Channel.SYNC, p.SyncBatch(v=p.PROTOCOL_VERSION, device=dev, batch_id=f"b{i}", features=["x"],
                                                rows=[[t0 + j, float(j)] for j in range(10)], flags=[0] * 10), dev)
              for i, (dev, t0) in enumerate([("gw-a", 100.0), ("gw-b", 200.0), ("gw-a", 300.0)])]
    items += [_item(p.Channel.HEARTBEAT, p.Heartbeat(
        v=p.PROTOCOL_VERSION, device="gw-a", ts=2000.0 + i, seq=i, model_version=1, readings_received=i,
        readings_scored=i, anomalies=0, rejected=0, queue_depth=0, uptime_s=i), "gw-a") for i in range(8)]
    with sessions() as s:
        store.write(s, items)
        s.add(db.ModelVersion(version=1, name="deep-ae", source="x", artifacts_dir="/m/1"))
        s.add(db.ModelVersion(version=2, name="ae-lstm", source="x", artifacts_dir="/m/2"))
        s.get(db.Device, "gw-c").revoked_at = 5.0  # type: ignore[union-attr]
        s.get(db.Device, "gw-b").online = False  # type: ignore[union-attr]
        s.commit()
    with sessions() as s:
        first = queries.anomalies(s, device="gw-a")[-1].event.id
        label_anomaly(s, first, db.LabelKind.FALSE_POSITIVE, "door open")
    with sessions() as s:
        assert [d.device_id for d in queries.devices(s)] == ["gw-a", "gw-b", "gw-c"]
        assert [d.device_id for d in queries.devices(s, online=False)] == ["gw-b"]
        detail = queries.device_detail(s, "gw-a")
        assert detail is not None and [h.seq for h in detail.heartbeats] == [7, 6, 5, 4, 3]
        assert queries.device_detail(s, "gw-zz") is None
        listed = queries.anomalies(s)
        assert [r.event.event_id for r in listed] == ["e3", "e2", "e1", "e0"]
        assert listed[-1].label is not None and listed[-1].label.note == "door open"
        assert [r.event.event_id for r in queries.anomalies(s, unlabelled=True, since=1001)] == ["e3", "e2", "e1"]
        assert [r.event.event_id for r in queries.anomalies(s, label=db.LabelKind.FALSE_POSITIVE)] == ["e0"]
        assert [r.event.event_id for r in queries.anomalies(s, limit=1)] == ["e3"]
        assert [b.batch_id for b in queries.sync_batches(s)] == ["b0", "b2", "b1"]
        assert [b.batch_id for b in queries.sync_batches(s, since=205, until=305)] == ["b2", "b1"]
        assert [b.batch_id for b in queries.sync_batches(s, devices=["gw-b"])] == ["b1"]
        assert queries.latest_model_name(s) == "ae-lstm"
        assert queries.summary(s, since=1002.0) == queries.FleetSummary(
            devices=3, online=2, provisioned=0, revoked=1, anomalies_since=2, synced_rows=30)
