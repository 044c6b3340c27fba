"""Staged rollouts: the state tables, waves and gates on a real SQLite database, and whole rollouts on real
Mosquitto with real agent processes and the in-process hub (`serve`'s HubServer with its rollout engine)."""

from __future__ import annotations

import itertools
import time
from functools import partial
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud_hub import db
from cloud_hub.brokers import RunningBroker
from cloud_hub.cli import main as cli
from cloud_hub.db.rollouts import DeviceRolloutState as D
from cloud_hub.db.rollouts import RolloutCommand
from cloud_hub.db.rollouts import RolloutState as R
from cloud_hub.home import HubHome
from cloud_hub.rollout import (
    GateAction,
    Gates,
    RolloutError,
    Selector,
    current_model_for,
    parse_duration,
    parse_fraction,
    parse_phases,
    request,
    start_rollout,
)
from cloud_hub.rollout.states import (
    DEVICE_TRANSITIONS,
    ROLLOUT_TRANSITIONS,
    TransitionError,
    move_device,
    move_rollout,
    reported,
)
from cloud_hub.rollout.waves import anomaly_gate, assign_waves, scored_readings
from cloud_hub.server import HubServer
from edge_agent.update import RecordFile
from shared.protocol import PROTOCOL_VERSION, AgentState, ModelState, Status
from tests.conftest import wait_until
from tests.test_update import Fleet, _bundle

# ------------------------------------------------------------------------------------------- unit


def test_device_transition_table_refuses_every_illegal_transition() -> None:
    assert set(DEVICE_TRANSITIONS) == set(D)
    allowed = 0
    for a, b in itertools.product(D, D):
        row = db.RolloutDevice(rollout_id=1, device_id="gw", state=a, updated_at=0.0, detail="")
        if b in DEVICE_TRANSITIONS[a]:
            move_device(row, b, 5.0, "why")
            assert (row.state, row.updated_at, row.detail) == (b, 5.0, "why")
            allowed += 1
        else:
            with pytest.raises(TransitionError):
                move_device(row, b, 5.0)
            assert (row.state, row.updated_at) == (a, 0.0)  # nothing changed
    assert allowed == sum(len(v) for v in DEVICE_TRANSITIONS.values())
    # Terminal states and the ones a report must never undo.
    assert not DEVICE_TRANSITIONS[D.FAILED] and not DEVICE_TRANSITIONS[D.ROLLED_BACK]
    assert D.SENT not in DEVICE_TRANSITIONS[D.HEALTHY] and D.QUEUED not in set().union(*DEVICE_TRANSITIONS.values())


def test_rollout_transition_table_refuses_every_illegal_transition() -> None:
    assert set(ROLLOUT_TRANSITIONS) == set(R)
    for a, b in itertools.product(R, R):
        r = db.Rollout(id=1, state=a, reason="", updated_at=0.0)
        if b in ROLLOUT_TRANSITIONS[a]:
            move_rollout(r, b, 7.0, "x")
            assert r.state == b and (r.finished_at == 7.0) == (b not in (R.RUNNING, R.PAUSED))
        else:
            with pytest.raises(TransitionError):
                move_rollout(r, b, 7.0)
            assert r.state == a


def _status(ms: ModelState, version: int | None, failed: int | None = None, rollout_id: int | None = 3) -> Status:
    return Status(v=PROTOCOL_VERSION, device="gw", ts=1.0, state=AgentState.ONLINE, model_state=ms,
                  model_version=version, failed_version=failed, rollout_id=rollout_id, error="bad")


def test_agent_reports_map_to_rollout_states() -> None:
    r = db.Rollout(id=3, version=2)
    assert reported(_status(ModelState.DOWNLOADING, 1), r) is None
    assert reported(_status(ModelState.STAGED, 1), r) == (D.VERIFIED, "")
    assert reported(_status(ModelState.STAGED, 1, rollout_id=2), r) is None  # another rollout's staging
    assert reported(_status(ModelState.ACTIVE, 2), r) == (D.ACTIVATED, "")
    assert reported(_status(ModelState.COMMITTED, 2), r) == (D.HEALTHY, "")
    assert reported(_status(ModelState.FAILED, 1, failed=2), r) == (D.FAILED, "bad")
    assert reported(_status(ModelState.FAILED, 1, failed=2, rollout_id=1), r) is None  # an old refusal
    assert reported(_status(ModelState.ROLLED_BACK, 1, failed=2), r) == (D.ROLLED_BACK, "agent rolled back: bad")
    assert reported(_status(ModelState.COMMITTED, 1), r) is None


def test_phases_durations_fractions_and_waves() -> None:
    assert parse_phases("5,25,100") == [5, 25, 100]
    for bad in ("", "5,25", "25,5,100", "0,100", "5,5,100", "x,100", "50,150"):
        with pytest.raises(ValueError):
            parse_phases(bad)
    assert parse_duration("10m") == 600 and parse_duration("90s") == 90 and parse_duration("45") == 45
    assert parse_duration("1.5h") == 5400 and parse_duration("250ms") == 0.25
    for bad in ("", "10x", "-1s", "m"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert parse_fraction("10%") == pytest.approx(0.1) and parse_fraction("0.25") == 0.25
    for bad in ("150%", "-0.1", "abc"):
        with pytest.raises(ValueError):
            parse_fraction(bad)
    assert assign_waves(3, [34, 100]) == [0, 1, 1]
    assert assign_waves(3, [5, 25, 100]) == [0, 1, 2]  # every wave gets a device while there are devices
    assert assign_waves(200, [5, 25, 100]).count(0) == 10 and assign_waves(200, [5, 25, 100]).count(1) == 40
    assert assign_waves(1, [5, 25, 100]) == [0] and assign_waves(0, [100]) == []
    with pytest.raises(ValueError):
        Selector(group="a", tag=("k", "v"))
    with pytest.raises(ValueError):
        Gates(max_failure=1.5)


def _home(tmp_path: Path) -> HubHome:
    home = HubHome(tmp_path / "hub")
    home.init("mqtt://127.0.0.1:1")  # nothing connects: these tests only write intent
    with home.sessions()() as s:
        for v in (1, 2):
            s.add(db.ModelVersion(version=v, name="ae-lstm", source="test", artifacts_dir=""))
            s.add(db.Bundle(version=v, quantization="int8", path=str(tmp_path / f"v{v}"), size=1, sha256="0" * 64))
        for i in range(10):
            s.add(db.Device(device_id=f"gw-{i}", first_seen=0.0, last_seen=0.0, model_version=1,
                            model_state="committed", group="lab" if i < 6 else "field",
                            tags={"site": "north"} if i % 2 else {}, profile="pi4" if i == 9 else ""))
        s.commit()
    return home


def test_start_rollout_queues_waves_commands_and_supersedes(tmp_path: Path) -> None:
    home = _home(tmp_path)
    with pytest.raises(LookupError):
        start_rollout(home, 7)
    rid = start_rollout(home, 2, Selector(group="lab"), "34,100", Gates(wait_s=30, max_failure=0.2))
    with home.sessions()() as s:
        rows = list(s.scalars(select(db.RolloutDevice).where(db.RolloutDevice.rollout_id == rid)
                              .order_by(db.RolloutDevice.device_id)))
        assert [r.device_id for r in rows] == [f"gw-{i}" for i in range(6)]
        assert [r.wave for r in rows] == [0, 0, 1, 1, 1, 1]  # floor(34% of 6) = 2
        assert {r.state for r in rows} == {D.QUEUED} and {r.previous_version for r in rows} == {1}
        r = s.get(db.Rollout, rid)
        assert r is not None and (r.state, r.phases, r.wait_s, r.max_failure) == (R.RUNNING, [34, 100], 30, 0.2)
    # Selectors by tag and profile.
    tagged = start_rollout(home, 2, Selector(tag=("site", "north")), [100])
    with home.sessions()() as s:
        assert sorted(s.scalars(select(db.RolloutDevice.device_id).where(db.RolloutDevice.rollout_id == tagged))) == [
            "gw-1", "gw-3", "gw-5", "gw-7", "gw-9"]
        # It shares lab devices with the first rollout: that one is superseded.
        first = s.get(db.Rollout, rid)
        assert first is not None and first.state == R.SUPERSEDED
    by_profile = start_rollout(home, 2, Selector(profile="pi4"), [100])
    # Commands: only those the state table allows are accepted.
    request(home, by_profile, RolloutCommand.PAUSE)
    with pytest.raises(RolloutError):
        request(home, rid, RolloutCommand.RESUME)  # superseded: final
    with pytest.raises(RolloutError):
        request(home, 999, RolloutCommand.ABORT)
    with home.sessions()() as s:
        row = s.get(db.Rollout, by_profile)
        assert row is not None and row.command == RolloutCommand.PAUSE and row.state == R.RUNNING  # serve applies it
    # Nothing completed yet: no group has a current model.
    assert current_model_for(home, "gw-0") is None


def test_anomaly_gate_compares_the_same_devices_under_both_models(tmp_path: Path) -> None:
    home = _home(tmp_path)
    gates = Gates(max_anomaly_increase=0.005)
    with home.sessions()() as s:
        row = db.RolloutDevice(rollout_id=1, device_id="gw-0", wave=0, state=D.HEALTHY, previous_version=1,
                               sent_at=100.0, updated_at=0.0)
        # v1 scored 1000 readings before the rollout with 2 events; v2 500 after it (counter reset by a restart).
        for i, (t, scored, v) in enumerate([(10, 0, 1), (50, 600, 1), (90, 1000, 1), (110, 0, 2), (150, 300, 2),
                                            (190, 500, 2)]):
            s.add(db.Heartbeat(device_id="gw-0", ts=t, received_at=t, seq=i, model_version=v, readings_scored=scored,
                               anomalies=0, rejected=0, queue_depth=0))
        for i, (t, v) in enumerate([(20, 1), (60, 1), (120, 2), (130, 2), (140, 2), (160, 2), (170, 2), (180, 2)]):
            s.add(db.AnomalyEvent(device_id="gw-0", event_id=f"e{i}", ts=t, detected_at=t, received_at=t, score=1,
                                  threshold=0.5, model_version=v))
        s.flush()
        assert scored_readings(s, "gw-0", 1, before=100) == 1000
        assert scored_readings(s, "gw-0", 2, after=100) == 500
        tripped = anomaly_gate(s, [row], 2, gates, min_readings=100)
        assert not tripped.passed and ("events per scored reading 0.0120 (6/500) vs previous 0.0020 (2/1000) on 1 "
                                       "device(s); rise 0.0100" in tripped.reason), tripped.reason
        assert anomaly_gate(s, [row], 2, Gates(max_anomaly_increase=0.02), 100).passed
        waiting = anomaly_gate(s, [row], 2, gates, min_readings=1000)
        assert waiting.passed and waiting.waiting  # not enough data under the new model yet
        assert anomaly_gate(s, [row], 2, Gates(), 100).reason == ""  # gate not configured


def test_cli_writes_intent_only(tmp_path: Path) -> None:
    home = _home(tmp_path)
    run = CliRunner().invoke
    out = run(cli, ["--home", str(home.path), "rollout", "start", "--model", "2", "--group", "field", "--phases",
                    "50,100", "--wait", "2m", "--max-failure", "25%", "--on-gate-failure", "pause"])
    assert out.exit_code == 0, out.output
    assert "rollout 1: v2 (int8) to group field: 4 device(s) in waves [2, 2]" in out.output
    with home.sessions()() as s:
        r = s.get(db.Rollout, 1)
        assert r is not None and (r.wait_s, r.max_failure, r.on_gate_failure) == (120, 0.25, "pause")
        assert {d.state for d in s.scalars(select(db.RolloutDevice))} == {D.QUEUED}  # nothing sent by the CLI
    bad = run(cli, ["--home", str(home.path), "rollout", "start", "--model", "2", "--phases", "50"])
    assert bad.exit_code == 2 and "last one 100" in bad.output
    bad = run(cli, ["--home", str(home.path), "rollout", "start", "--model", "2", "--group", "a", "--tag", "k=v"])
    assert bad.exit_code != 0 and "at most one" in bad.output
    assert run(cli, ["--home", str(home.path), "rollout", "pause", "1"]).exit_code == 0
    status = run(cli, ["--home", str(home.path), "rollout", "status", "1"])
    assert status.exit_code == 0 and "command pause pending" in status.output and "gw-6" in status.output
    assert run(cli, ["--home", str(home.path), "rollout", "resume", "5"]).exit_code == 1


# ------------------------------------------------------------------------------------------- integration

FAST_PROBATION = "[update]\nprobation_s = 1\nmin_windows = 20\nrecent_windows = 100"


def _rollout(home: HubHome, rid: int) -> tuple[R, dict[str, D]]:
    with home.sessions()() as s:
        r = s.get(db.Rollout, rid)
        assert r is not None
        rows = s.scalars(select(db.RolloutDevice).where(db.RolloutDevice.rollout_id == rid))
        return r.state, {x.device_id: x.state for x in rows}


def _rows(home: HubHome, rid: int) -> dict[str, db.RolloutDevice]:
    with home.sessions()() as s:
        return {x.device_id: x for x in s.scalars(select(db.RolloutDevice).where(db.RolloutDevice.rollout_id == rid))}


def _committed(fleet: Fleet, device: str, version: int) -> bool:
    d = fleet.device(device)
    return d is not None and (d.model_state, d.model_version) == ("committed", version)


def _add_devices(home: HubHome, groups: dict[str, str]) -> None:
    """Devices the operator provisioned (group set) before their agents first connect."""
    now = time.time()
    with home.sessions()() as s:
        for device, group in groups.items():
            s.add(db.Device(device_id=device, first_seen=now, last_seen=now, group=group))
        s.commit()


@pytest.fixture
def fleet(tmp_path: Path, mosquitto: RunningBroker, trained_home):  # type: ignore[no-untyped-def]
    f = Fleet(tmp_path, mosquitto, trained_home)
    yield f
    f.close()


@pytest.mark.integration
def test_staged_rollout_goes_wave_by_wave_to_healthy(fleet: Fleet) -> None:
    """3 devices, phases 34,100: the first device is announced alone, the other two only after it passed
    probation; the rollout completes with every agent committed on v2."""
    devices = ["gw-a", "gw-b", "gw-c"]
    for d in devices:
        fleet.agent(d, FAST_PROBATION)
    for d in devices:
        wait_until(partial(_committed, fleet, d, 1), 60, f"{d} online on v1")
    _bundle(fleet.home, fleet.src, 2)
    rid = start_rollout(fleet.home, 2, Selector(), "34,100", Gates(wait_s=120))
    wait_until(lambda: _rollout(fleet.home, rid)[0] == R.COMPLETED, 120, "rollout completed")
    state, per_device = _rollout(fleet.home, rid)
    assert per_device == dict.fromkeys(devices, D.HEALTHY)
    rows = _rows(fleet.home, rid)
    assert [rows[d].wave for d in devices] == [0, 1, 1]
    first = rows["gw-a"]
    for d in ("gw-b", "gw-c"):  # the second wave went out only after the first passed probation
        assert rows[d].sent_at is not None and first.sent_at is not None and rows[d].sent_at >= first.updated_at
        assert rows[d].sent_at > first.sent_at
    for d in devices:
        wait_until(partial(_committed, fleet, d, 2), 30, f"{d} committed v2")
        assert RecordFile(fleet.tmp / d / "state").load().committed == 2
    assert current_model_for(fleet.home, "gw-a") == 2


@pytest.mark.integration
def test_gate_trips_aborts_and_sends_the_wave_back(fleet: Fleet) -> None:
    """Wave 1 = gw-2slow (its profile's latency budget refuses v2 at the staged check) and gw-1ok (activates v2
    and passes probation).  1 of 2 failed > 10%: the rollout aborts, gw-1ok is sent back to v1 by a signed
    announcement on its own topic, and gw-3later (wave 2) never hears of v2."""
    profile = fleet.tmp / "tiny.toml"
    profile.write_text('name = "tiny"\ndescription = "a gateway with a 1 µs budget"\narch = "x86_64"\n'
                       "latency_p99_ms = 0.001\n")
    fleet.agent("gw-1ok", FAST_PROBATION)
    fleet.agent("gw-2slow", f'profile = "{profile}"\n' + FAST_PROBATION)
    fleet.agent("gw-3later", FAST_PROBATION)
    for d in ("gw-1ok", "gw-2slow", "gw-3later"):
        wait_until(partial(_committed, fleet, d, 1), 60, f"{d} online on v1")
    # Recent windows scored, so the staged check judges (and refuses on the slow gateway).
    wait_until(lambda: fleet.scored("gw-2slow")[0] > 300, 60, "gw-2slow has recent windows")
    _bundle(fleet.home, fleet.src, 2)
    rid = start_rollout(fleet.home, 2, Selector(), "67,100", Gates(wait_s=120, max_failure=0.1))
    wait_until(lambda: _rollout(fleet.home, rid)[0] == R.ABORTED, 120, "rollout aborted by its gate")
    state, per_device = _rollout(fleet.home, rid)
    assert per_device == {"gw-1ok": D.ROLLED_BACK, "gw-2slow": D.FAILED, "gw-3later": D.QUEUED}, per_device
    rows = _rows(fleet.home, rid)
    assert "sent back to v1" in rows["gw-1ok"].detail and "latency p99" in rows["gw-2slow"].detail
    with fleet.home.sessions()() as s:
        r = s.get(db.Rollout, rid)
        assert r is not None and "1/2 devices failed" in r.reason
        assert s.get(db.DeviceTarget, "gw-3later") is None  # never announced
    # gw-1ok had committed v2 (wave healthy) and is back on v1 by the hub's revert.
    wait_until(partial(_committed, fleet, "gw-1ok", 1), 60, "gw-1ok back on v1")
    rec = RecordFile(fleet.tmp / "gw-1ok" / "state").load()
    assert (rec.committed, rec.previous) == (1, 2)
    later = RecordFile(fleet.tmp / "gw-3later" / "state").load()
    assert (later.state, later.committed, later.refused) == (ModelState.COMMITTED, 1, {})
    slow = fleet.device("gw-2slow")
    assert _committed(fleet, "gw-3later", 1) and slow is not None and (slow.model_state, slow.model_version) == (
        "failed", 1)  # refused v2, still scoring with v1


@pytest.mark.integration
def test_restart_mid_rollout_resumes_and_late_devices_get_their_groups_model(fleet: Fleet) -> None:
    """The hub stops right after wave 1 was announced and restarts: the rollout resumes from the database and
    completes.  Then a device of the group comes online on v1 and is given the group's v2; a device of
    another group keeps v1."""
    _add_devices(fleet.home, {"lab-1": "lab", "lab-2": "lab", "field-1": "field"})
    for d in ("lab-1", "lab-2", "field-1"):
        fleet.agent(d, FAST_PROBATION)
    for d in ("lab-1", "lab-2", "field-1"):
        wait_until(partial(_committed, fleet, d, 1), 60, f"{d} online on v1")
    _bundle(fleet.home, fleet.src, 2)
    rid = start_rollout(fleet.home, 2, Selector(group="lab"), "50,100", Gates(wait_s=120))
    wait_until(lambda: _rollout(fleet.home, rid)[1]["lab-1"] != D.QUEUED, 30, "wave 1 announced")
    fleet.server.stop()  # agents go on reporting and requesting; the broker queues it for the hub's session
    wait_until(lambda: 2 in (RecordFile(fleet.tmp / "lab-1" / "state").load().candidate,
                             RecordFile(fleet.tmp / "lab-1" / "state").load().committed), 60,
               "lab-1 acting on the announcement (its model request waits for the hub)")
    assert _rollout(fleet.home, rid)[1]["lab-2"] == D.QUEUED  # nobody drove the rollout meanwhile
    fleet.server = HubServer(fleet.home)
    fleet.server.start()
    wait_until(lambda: _rollout(fleet.home, rid)[0] == R.COMPLETED, 120, "rollout completed after the restart")
    assert _rollout(fleet.home, rid)[1] == {"lab-1": D.HEALTHY, "lab-2": D.HEALTHY}
    assert current_model_for(fleet.home, "lab-1") == 2 and current_model_for(fleet.home, "field-1") is None

    _add_devices(fleet.home, {"lab-late": "lab"})  # provisioned after the rollout; its agent runs v1
    fleet.agent("lab-late", FAST_PROBATION)
    wait_until(partial(_committed, fleet, "lab-late", 2), 90, "the late device runs its group's v2")
    with fleet.home.sessions()() as s:
        told = s.get(db.DeviceTarget, "lab-late")
        assert told is not None and (told.version, told.rollout_id) == (2, rid)
        assert s.get(db.DeviceTarget, "field-1") is None
    assert _committed(fleet, "field-1", 1)
    assert RecordFile(fleet.tmp / "field-1" / "state").load().committed == 1


def test_migration_turns_old_whole_fleet_rollouts_into_completed_ones(tmp_path: Path) -> None:
    """Revision 0007 on a hub that rolled out with the old single-step rollout, and back."""
    from sqlalchemy import create_engine, text

    from cloud_hub.db import migrate

    engine = create_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    migrate.upgrade(engine, "0006")
    with engine.begin() as c:
        c.execute(text("INSERT INTO model_versions (version, name, created_at, source, artifacts_dir, training) "
                       "VALUES (1, 'ae-lstm', '2026-01-01', 'x', '', '{}')"))
        c.execute(text("INSERT INTO bundles (id, version, quantization, path, sha256, size, agreement, created_at, "
                       "profile) VALUES (1, 1, 'int8', 'p', 's', 1, '{}', '2026-01-01', '')"))
        c.execute(text("INSERT INTO rollouts (id, bundle_id, version, started_at, state) VALUES "
                       "(1, 1, 1, '2026-01-01', 'SUPERSEDED'), (2, 1, 1, '2026-01-02', 'ACTIVE')"))
        c.execute(text("INSERT INTO rollout_devices (rollout_id, device_id, state, updated_at, detail) VALUES "
                       "(2, 'a', 'PENDING', 0, ''), (2, 'b', 'REQUESTED', 0, ''), (2, 'c', 'ACTIVATED', 0, ''), "
                       "(2, 'd', 'FAILED', 0, 'bad')"))
    migrate.upgrade(engine)
    with db.session_factory(engine)() as s:
        assert [(r.state, r.phases, r.selector) for r in s.scalars(select(db.Rollout).order_by(db.Rollout.id))] == [
            (R.SUPERSEDED, [100], {}), (R.COMPLETED, [100], {})]
        assert {d.device_id: d.state for d in s.scalars(select(db.RolloutDevice))} == {
            "a": D.SENT, "b": D.SENT, "c": D.ACTIVATED, "d": D.FAILED}
        s.add(db.RolloutDevice(rollout_id=2, device_id="e", state=D.ROLLED_BACK, updated_at=0.0))
        s.commit()
    migrate.downgrade(engine, "0006")
    with engine.connect() as c:
        assert dict(c.execute(text("SELECT device_id, state FROM rollout_devices")).all()) == {
            "a": "PENDING", "b": "PENDING", "c": "ACTIVATED", "d": "FAILED", "e": "FAILED"}
        assert [r[0] for r in c.execute(text("SELECT state FROM rollouts ORDER BY id"))] == ["SUPERSEDED", "ACTIVE"]


@pytest.mark.integration
def test_operator_commands_timeouts_and_a_pausing_gate(hub_server: HubServer, trained_home) -> None:  # type: ignore[no-untyped-def]
    """Simulated agents (the bench's: real MQTT, signature and hash checks, no interpreter) on real Mosquitto:
    a device that cannot verify the announcement times out, the gate pauses the rollout, `resume` overrides
    it and the next wave completes; `rollback` then sends every device back (no previous model: cleared)."""
    from cloud_hub.rollout.bench import SimAgent, signed_copy
    from shared.signing import generate_private_key, public_key_b64

    home = hub_server.home
    _, exported = trained_home
    signed_copy(home, exported.bundle_dir, 1)
    cfg = home.config().broker
    agents = [SimAgent("sim-1", cfg, public_key_b64(generate_private_key())),  # trusts another hub: ignores us
              SimAgent("sim-2", cfg, home.public_key())]
    try:
        for a in agents:
            assert a.subscribed.wait(15)
            a.status(ModelState.NONE)
        wait_until(lambda: all(current is not None for current in (fleet_dev(home, "sim-1"), fleet_dev(home, "sim-2"))),
                   15, "simulated agents known to the hub")
        rid = start_rollout(home, 1, Selector(), "50,100",
                            Gates(wait_s=2, max_failure=0.0, on_failure=GateAction.PAUSE))
        wait_until(lambda: _rollout(home, rid)[0] == R.PAUSED, 30, "the gate paused the rollout")
        assert _rollout(home, rid)[1] == {"sim-1": D.TIMED_OUT, "sim-2": D.QUEUED}
        assert agents[0].rejected >= 1  # it did get the announcement, and refused its signature
        request(home, rid, RolloutCommand.RESUME)
        wait_until(lambda: _rollout(home, rid)[0] == R.COMPLETED, 30, "resumed rollout completed")
        assert _rollout(home, rid)[1] == {"sim-1": D.TIMED_OUT, "sim-2": D.HEALTHY}
        assert agents[1].version == 1 and current_model_for(home, "sim-2") == 1
        with pytest.raises(RolloutError):
            request(home, rid, RolloutCommand.PAUSE)  # completed: only rollback is left
        request(home, rid, RolloutCommand.ROLLBACK)
        wait_until(lambda: _rollout(home, rid)[0] == R.ROLLED_BACK, 30, "rollback carried out")
        assert _rollout(home, rid)[1] == {"sim-1": D.ROLLED_BACK, "sim-2": D.ROLLED_BACK}
        with home.sessions()() as s:
            told = s.get(db.DeviceTarget, "sim-2")
            assert told is not None and told.version is None  # no previous model: its announcement is cleared
        assert current_model_for(home, "sim-2") is None
    finally:
        for a in agents:
            a.close()


def _telemetry(s: Session, device: str, t: float, version: int | None, scored: int, flagged: int | None) -> None:
    s.add(db.TelemetryRecord(device_id=device, msg_id=f"m{t}", ts=t, received_at=t, interval_s=10.0, scored=scored,
                             score_mean=0.1, score_max=0.5, flagged=flagged, model_version=version))


def test_anomaly_gate_judges_flagged_windows_per_device_and_falls_back_to_events(tmp_path: Path) -> None:
    """A model that flags continuously raises ONE episode: the event rate hides it, the flagged-window rate
    (telemetry) does not.  Devices without flagged counts (older agents) are judged by events."""
    home = _home(tmp_path)
    gates = Gates(max_anomaly_increase=0.05)
    with home.sessions()() as s:
        rows = [db.RolloutDevice(rollout_id=1, device_id=d, wave=0, state=D.HEALTHY, previous_version=1,
                                 sent_at=100.0, updated_at=0.0) for d in ("gw-0", "gw-1")]
        # gw-0 (new agent): v1 flagged 10 of 1000 windows; v2 flags 300 of 1000 in one long episode.
        _telemetry(s, "gw-0", 50, 1, 1000, 10)
        _telemetry(s, "gw-0", 150, 2, 600, 200)
        _telemetry(s, "gw-0", 160, 2, 400, 100)
        _telemetry(s, "gw-0", 170, None, 0, 0)  # an interval without a model: not counted
        s.add(db.AnomalyEvent(device_id="gw-0", event_id="long", ts=150, detected_at=150, received_at=150, score=1,
                              threshold=0.5, model_version=2))
        s.flush()
        tripped = anomaly_gate(s, rows[:1], 2, gates, min_readings=500)
        assert not tripped.passed, tripped.reason
        assert ("flagged windows per scored window 0.3000 (300/1000) vs previous 0.0100 (10/1000) on 1 device(s); "
                "rise 0.2900") in tripped.reason
        # gw-1 is an older agent (telemetry without flagged counts): its events and heartbeats speak for it.
        _telemetry(s, "gw-1", 150, None, 500, None)
        for i, (t, scored, v) in enumerate([(10, 0, 1), (90, 1000, 1), (110, 0, 2), (190, 3000, 2)]):
            s.add(db.Heartbeat(device_id="gw-1", ts=t, received_at=t, seq=i, model_version=v, readings_scored=scored,
                               anomalies=0, rejected=0, queue_depth=0))
        s.add(db.AnomalyEvent(device_id="gw-1", event_id="x", ts=150, detected_at=150, received_at=150, score=1,
                              threshold=0.5, model_version=2))
        s.flush()
        both = anomaly_gate(s, rows, 2, gates, min_readings=500)
        # Weighted by what each scored under v2: (0.29 * 1000 + 1/3000 * 3000) / 4000 = 0.07275 (binary: 0.0727).
        assert not both.passed and "rise 0.0727 (worst gw-0 0.3000 vs 0.0100)" in both.reason, both.reason
        assert "events per scored reading 0.0003 (1/3000) vs previous 0.0000 (0/1000) on 1 device(s)" in both.reason
        assert anomaly_gate(s, rows[1:], 2, gates, 500).passed  # alone, the older agent passes
        assert anomaly_gate(s, rows, 2, Gates(max_anomaly_increase=0.08), 500).passed


def fleet_dev(home: HubHome, device: str) -> db.Device | None:
    with home.sessions()() as s:
        return s.get(db.Device, device)


@pytest.mark.integration
def test_anomaly_rate_gate_reads_flagged_windows_from_telemetry(hub_server: HubServer, trained_home) -> None:  # type: ignore[no-untyped-def]
    """v1 → v2 on a device that reports flagged windows through MQTT (telemetry, stored by the hub's ingest):
    v2 flags 40% of its windows in ONE episode (no new event at all); the gate sees the rise and aborts."""
    from cloud_hub.config import RolloutConfig
    from cloud_hub.rollout.bench import SimAgent, signed_copy

    home = hub_server.home
    hub_server.rollouts.cfg = RolloutConfig(min_gate_readings=500)
    _, exported = trained_home
    signed_copy(home, exported.bundle_dir, 1)
    signed_copy(home, exported.bundle_dir, 2)
    agent = SimAgent("sim-t", home.config().broker, home.public_key())

    def telemetry_rows() -> int:
        with home.sessions()() as s:
            return len(list(s.scalars(select(db.TelemetryRecord).where(db.TelemetryRecord.device_id == "sim-t"))))

    try:
        assert agent.subscribed.wait(15)
        agent.version = 1
        agent.status(ModelState.COMMITTED)
        agent.telemetry(1000, 10)  # v1: 1% of its windows
        wait_until(lambda: telemetry_rows() == 1 and (d := fleet_dev(home, "sim-t")) is not None
                   and d.model_version == 1, 15, "v1's telemetry stored")
        rid = start_rollout(home, 2, Selector(), [100], Gates(wait_s=60, max_anomaly_increase=0.1))
        wait_until(lambda: _rollout(home, rid)[1]["sim-t"] == D.HEALTHY, 30, "device healthy on v2")
        assert _rollout(home, rid)[0] == R.RUNNING  # no window scored by v2 yet: the gate waits
        agent.telemetry(600, 240)
        agent.telemetry(400, 160)
        hub_server.rollouts.wake()
        wait_until(lambda: _rollout(home, rid)[0] == R.ABORTED, 30, "the gate aborted the rollout")
        with home.sessions()() as s:
            r = s.get(db.Rollout, rid)
            assert r is not None and ("flagged windows per scored window 0.4000 (400/1000) vs previous 0.0100 "
                                      "(10/1000)") in r.reason, r.reason
    finally:
        agent.close()


@pytest.mark.integration
def test_anomaly_rate_gate_waits_for_data_then_aborts(hub_server: HubServer, trained_home) -> None:  # type: ignore[no-untyped-def]
    """The engine holds a healthy wave until its devices scored enough readings under the new model, then
    trips on the anomaly-rate rise and sends the wave back (heartbeats and events stored as ingest would)."""
    from cloud_hub.config import RolloutConfig
    from cloud_hub.rollout.bench import SimAgent, signed_copy

    home = hub_server.home
    hub_server.rollouts.cfg = RolloutConfig(min_gate_readings=500)
    _, exported = trained_home
    signed_copy(home, exported.bundle_dir, 1)
    agent = SimAgent("sim-a", home.config().broker, home.public_key())
    try:
        assert agent.subscribed.wait(15)
        agent.status(ModelState.NONE)
        wait_until(lambda: fleet_dev(home, "sim-a") is not None, 15, "simulated agent known to the hub")
        rid = start_rollout(home, 1, Selector(), [100], Gates(wait_s=60, max_anomaly_increase=0.01))
        wait_until(lambda: _rollout(home, rid)[1]["sim-a"] == D.HEALTHY, 30, "device healthy")
        ticks = hub_server.rollouts.ticks
        wait_until(lambda: hub_server.rollouts.ticks >= ticks + 2, 15, "the engine judged the settled wave")
        assert _rollout(home, rid)[0] == R.RUNNING  # healthy, but no readings scored by v1 yet: the gate waits
        now = time.time()
        with home.sessions()() as s:
            for i, scored in enumerate((0, 400, 1000)):
                s.add(db.Heartbeat(device_id="sim-a", ts=now + i, received_at=now + i, seq=i, model_version=1,
                                   readings_scored=scored, anomalies=0, rejected=0, queue_depth=0))
            for i in range(50):  # 5% of the readings raise an event; the previous (no) model raised none
                s.add(db.AnomalyEvent(device_id="sim-a", event_id=f"e{i}", ts=now, detected_at=now, received_at=now,
                                      score=2.0, threshold=1.0, model_version=1))
            s.commit()
        hub_server.rollouts.wake()
        wait_until(lambda: _rollout(home, rid)[0] == R.ABORTED, 30, "the anomaly-rate gate aborted the rollout")
        with home.sessions()() as s:
            r = s.get(db.Rollout, rid)
            assert r is not None and "events per scored reading 0.0500 (50/1000) vs previous 0.0000 (0/0)" in r.reason, (
                r.reason)
        assert _rollout(home, rid)[1] == {"sim-a": D.ROLLED_BACK}
    finally:
        agent.close()
