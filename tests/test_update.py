"""Model update state machine: refusal of bad bundles before the swap, rollback during probation,
and recovery from a SIGKILL at every state boundary — on real Mosquitto, the real hub and agent processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from cloud_hub import db, rollout
from cloud_hub.brokers import RunningBroker
from cloud_hub.demo.simulator import FEATURES
from cloud_hub.home import HubHome
from cloud_hub.rollout.bench import signed_copy
from cloud_hub.server import HubServer
from edge_agent.config import UpdateConfig
from edge_agent.detector import ScoredBatch
from edge_agent.model_store import ModelStore
from edge_agent.update import (
    TRANSITIONS,
    Health,
    RecordFile,
    TransitionError,
    Updater,
    UpdateRecord,
    boot_version,
    provision,
)
from shared import bundle as bundle_fmt
from shared.mqtt import BrokerConfig, connect, make_client
from shared.profiles import FirmwareProfile
from shared.protocol import (
    PROTOCOL_VERSION,
    Channel,
    ModelState,
    Reading,
    Readings,
    device_topic,
    encode,
)
from shared.signing import parse_public_key
from tests.conftest import REPO, simulated_series, wait_until, write_csv

# ------------------------------------------------------------------------------------------- unit


def test_transition_table_covers_every_state_and_rejects_the_rest(tmp_path: Path) -> None:
    assert set(TRANSITIONS) == set(ModelState)
    assert TRANSITIONS[ModelState.ACTIVE] == {ModelState.COMMITTED, ModelState.ROLLED_BACK}
    assert ModelState.ACTIVE not in TRANSITIONS[ModelState.VERIFYING]  # never swap in an unchecked model
    rec = UpdateRecord(state=ModelState.ROLLED_BACK, committed=3, previous=2, error="probation: x", failed_version=4,
                       refused={4: ("probation: x", 7)})
    f = RecordFile(tmp_path)
    f.save(rec)
    assert f.load() == rec and not list(tmp_path.glob("*.tmp"))
    from edge_agent.config import AgentConfig

    cfg = AgentConfig(device_id="gw", state_dir=tmp_path, trusted_keys=["x"])
    upd = Updater(cfg, ModelStore(tmp_path, []), None, None, swap=lambda m: None,  # type: ignore[arg-type]
                  request=lambda v: None, publish_status=lambda: None)
    upd.rec = rec
    with pytest.raises(TransitionError):
        upd._enter(ModelState.ACTIVE)
    assert f.load() == rec  # nothing persisted for a refused transition


def _windows(scores: list[float], threshold: float = 1.0) -> ScoredBatch:
    n, a = len(scores), np.asarray(scores, dtype=np.float64)
    return ScoredBatch(ts=np.arange(n, dtype=np.float64), scores=a, threshold=threshold, reconstruction_error=a,
                       prediction_error=np.zeros(n), contributions=np.zeros((n, 1)), likelihood=np.zeros(n),
                       likelihood_threshold=None, anomalous=a > threshold, model_version=2,
                       windows=np.zeros((n, 1, 1)))


def test_health_verdicts() -> None:
    cfg = UpdateConfig(min_windows=10, max_anomaly_rate=0.2)
    profile = FirmwareProfile(name="tiny", description="", arch="x86_64", latency_p99_ms=1.0)
    h = Health()
    h.add(_windows([0.1] * 5 + [float("nan")]), 0.0001)
    assert "non-finite" in (h.verdict(cfg, profile) or "")  # at once, whatever the window count
    h = Health()
    h.add(_windows([5.0] * 5), 0.0001)
    assert h.verdict(cfg, profile) is None  # too few windows to judge a rate
    h.add(_windows([0.1] * 15), 0.0001)
    assert "flags 25%" in (h.verdict(cfg, profile) or "")
    # Judged against the running model on the same data: a burst both models flag is no reason to refuse.
    assert h.verdict(cfg, profile, reference_rate=0.2) is None
    # No running model to compare with (a gateway's first model): the rate is not judged.
    assert h.verdict(cfg, profile, reference_rate=None) is None
    assert "running model 4%" in (h.verdict(cfg, profile, reference_rate=0.04) or "")
    h = Health()
    h.add(_windows([0.1] * 20), 0.005)
    assert "latency p99 5.000 ms" in (h.verdict(cfg, profile) or "")
    assert h.verdict(cfg, None) is None  # without a profile no latency budget


# ------------------------------------------------------------------------------------------- integration

WINDOW = 16  # trained_home's window


def _bundle(home: HubHome, src: Path, version: int, *, threshold: float | None = None,
            model: bytes | None = None) -> bytes:
    """Re-version (and optionally break) the trained bundle, sign it with ``home``'s key, register it."""
    m = bundle_fmt.parse_manifest(bundle_fmt.read_dir(src)[bundle_fmt.MANIFEST])
    decision = None if threshold is None else replace(m.decision, score_threshold=threshold)
    return signed_copy(home, src, version, source="test", decision=decision, model=model).read_bytes()


def _nan_model(window: int, n_features: int, heads: list[str]) -> bytes:
    """A float TFLite model with the trained model's heads whose every output is NaN."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, window, n_features], tf.float32)])
    def f(x):  # type: ignore[no-untyped-def]
        nan = tf.math.log(x * 0.0 - 1.0)  # log of -1: NaN, computed from the input so it is not folded
        out = {"reconstruction": nan, "prediction": nan[:, -1, :]}
        return [out[h] for h in heads]

    conv = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()])
    return bytes(conv.convert())


class Fleet:
    """Real Mosquitto + HubServer; agent processes started from generated configs."""

    def __init__(self, tmp_path: Path, broker: RunningBroker, trained_home) -> None:  # type: ignore[no-untyped-def]
        self.tmp, self.broker = tmp_path, broker
        self.home = HubHome(tmp_path / "hub")
        self.home.init(broker.url)
        self.server = HubServer(self.home)
        self.server.start()
        _, exported = trained_home
        self.src = exported.bundle_dir
        self.v1 = _bundle(self.home, self.src, 1)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        cfg = BrokerConfig(url=broker.url)
        self.client = make_client(cfg, "test-update", persistent=False)
        connect(self.client, cfg)

    def agent(self, device: str, extra: str = "", env: dict[str, str] | None = None, csv: bool = True,
              provisioned: bool = True) -> Path:
        """Start an agent that already runs v1 (committed), or no model at all; returns its state dir."""
        d = self.tmp / device
        state = d / "state"
        if not state.exists():
            state.mkdir(parents=True)
            if provisioned:
                store = ModelStore(state, [parse_public_key(self.home.public_key())])
                store.install(self.v1)
                provision(state, 1)
            ts, values = simulated_series(120, seed=1, t0=1_700_100_000.0)  # the trained device, later on
            write_csv(d / "replay.csv", ts, values)
        src = '[[sources]]\ntype = "csv"\npath = "replay.csv"\nrate_hz = 100\nloop = true\n' if csv else ""
        top, _, tables = extra.partition("[")
        (d / "agent.toml").write_text(
            f'device_id = "{device}"\nstate_dir = "state"\ntrusted_keys = ["{self.home.public_key()}"]\n'
            f'heartbeat_s = 0.5\n{top}\n[broker]\nurl = "{self.broker.url}"\n[sync]\nenabled = false\n'
            f'{"[" + tables if tables else ""}\n{src}')
        log = open(d / "agent.log", "ab")  # noqa: SIM115
        self.procs[device] = subprocess.Popen(
            [sys.executable, "-m", "edge_agent.cli", "run", "--config", str(d / "agent.toml")], cwd=REPO,
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        return state

    def announce(self, device: str | None, version: int, rollout_id: int) -> None:
        """Signed announcement, to one device (its own topic) or the fleet (a real rollout)."""
        if device is None:
            rollout.start(self.home, version, "int8")
            return
        archive = Path(self.home.path / f"v{version}.tar.gz").read_bytes()
        ann = rollout.announce(self.home, version, "ae-lstm", archive, bundle_fmt.sha256_hex(archive), rollout_id)
        self.client.publish(device_topic(device, Channel.MODEL), encode(ann), qos=1, retain=True).wait_for_publish(5)

    def device(self, device: str) -> db.Device | None:
        with self.home.sessions()() as s:
            return s.get(db.Device, device)

    def scored(self, device: str) -> tuple[int, int | None]:
        """Latest heartbeat: readings scored so far and the model that scores them."""
        with self.home.sessions()() as s:
            hb = s.scalars(select(db.Heartbeat).where(db.Heartbeat.device_id == device)
                           .order_by(db.Heartbeat.id.desc())).first()
            return (hb.readings_scored, hb.model_version) if hb else (0, None)

    def last_heartbeat_id(self) -> int:
        with self.home.sessions()() as s:
            return int(s.scalar(select(func.max(db.Heartbeat.id))) or 0)

    def events(self, device: str, version: int) -> int:
        with self.home.sessions()() as s:
            return int(s.scalar(select(func.count()).select_from(db.AnomalyEvent).where(
                db.AnomalyEvent.device_id == device, db.AnomalyEvent.model_version == version)) or 0)

    def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            p.wait(30)
        self.client.disconnect()
        self.client.loop_stop()
        self.server.stop()


@pytest.fixture
def fleet(tmp_path: Path, mosquitto: RunningBroker, trained_home):  # type: ignore[no-untyped-def]
    f = Fleet(tmp_path, mosquitto, trained_home)
    yield f
    f.close()


def _state(fleet: Fleet, device: str) -> tuple[str, int | None, str] | None:
    d = fleet.device(device)
    return (d.model_state, d.model_version, d.last_error) if d else None


def _reported(fleet: Fleet, device: str, state: str, reason: str) -> bool:
    st = _state(fleet, device)
    return st is not None and st[0] == state and reason in st[2]


def _on(fleet: Fleet, device: str, state: str, version: int) -> bool:
    st = _state(fleet, device)
    return st is not None and st[:2] == (state, version)


def _scored_beyond(fleet: Fleet, device: str, n: int, after_heartbeat: int) -> bool:
    """A heartbeat newer than ``after_heartbeat`` (the restarted process) reports more than n scored."""
    with fleet.home.sessions()() as s:
        return bool(s.scalar(select(func.count()).select_from(db.Heartbeat).where(
            db.Heartbeat.device_id == device, db.Heartbeat.id > after_heartbeat, db.Heartbeat.readings_scored > n)))


def _keeps_scoring_with(fleet: Fleet, device: str, version: int) -> None:
    """Readings go on being scored by ``version``: the scored count moves on under it."""
    wait_until(lambda: fleet.scored(device)[1] == version, 20, f"{device} scoring with v{version}")
    before = fleet.scored(device)[0]
    wait_until(lambda: fleet.scored(device)[0] > before + 100 and fleet.scored(device)[1] == version, 30,
               f"{device} still scoring with v{version}")


@pytest.mark.integration
def test_bad_bundles_are_refused_before_the_swap(fleet: Fleet, trained_home) -> None:  # type: ignore[no-untyped-def]
    """NaN outputs, a model too slow for the profile, one that flags everything: each refused at the
    staged check on the recent windows; a model over the profile's model bytes or memory budget: refused
    on load. v1 scoring throughout, the hub told why."""
    m = bundle_fmt.parse_manifest(bundle_fmt.read_dir(fleet.src)[bundle_fmt.MANIFEST])
    _bundle(fleet.home, fleet.src, 2, model=_nan_model(WINDOW, m.preprocessing.n_features, m.scoring.heads))
    _bundle(fleet.home, fleet.src, 3)  # a sound model; the gateway's profile is what it cannot meet
    _bundle(fleet.home, fleet.src, 4, threshold=1e-9)
    profile = fleet.tmp / "tiny.toml"
    profile.write_text('name = "tiny"\ndescription = "a gateway with a 1 µs budget"\narch = "x86_64"\n'
                       "latency_p99_ms = 0.001\n")
    small = fleet.tmp / "small.toml"  # the profile's budgets checked on load, before any staged check
    small.write_text('name = "small"\ndescription = "a 1 kB model budget"\narch = "x86_64"\nmax_model_bytes = 1000\n')
    lean = fleet.tmp / "lean.toml"
    lean.write_text('name = "lean"\ndescription = "16 MB of memory"\narch = "x86_64"\nmemory_budget_mb = 16\n')
    cases = {"gw-nan": (2, "", "non-finite scores"), "gw-slow": (3, f'profile = "{profile}"', "latency p99"),
             "gw-flags": (4, "", "flags 100%"), "gw-big": (3, f'profile = "{small}"', "profile small allows 1000"),
             "gw-lean": (3, f'profile = "{lean}"', "exceeds profile lean's 16 MB")}
    for device, (_, extra, _) in cases.items():
        fleet.agent(device, extra + "\n[update]\nmin_windows = 50\nrecent_windows = 100")
    for device in cases:
        _keeps_scoring_with(fleet, device, 1)  # recent windows exist before the announcement
    for i, (device, (version, _, _)) in enumerate(cases.items()):
        fleet.announce(device, version, rollout_id=10 + i)
    for device, (version, _, reason) in cases.items():
        wait_until(partial(_reported, fleet, device, "failed", reason), 60, f"{device}: refusal reported to the hub")
        st = _state(fleet, device)
        assert st is not None and st[1] == 1 and ("staged check" in st[2]) == (device in ("gw-nan", "gw-slow", "gw-flags")), st
        _keeps_scoring_with(fleet, device, 1)
        assert fleet.events(device, version) == 0  # the bad model never scored a live reading
        rec = RecordFile(fleet.tmp / device / "state").load()
        assert (rec.state, rec.committed, rec.failed_version) == (ModelState.FAILED, 1, version)


@pytest.mark.integration
def test_probation_rolls_back_by_itself(fleet: Fleet) -> None:
    """With no recent data the staged check cannot judge; live data on probation shows the model flags
    everything; the agent goes back to v1 alone, reports rolled_back, and v1 scores every later reading."""
    device = "gw-probation"
    _bundle(fleet.home, fleet.src, 5, threshold=1e-9)
    fleet.agent(device, "[update]\nmin_windows = 50\nprobation_s = 600", csv=False)
    wait_until(lambda: (st := _state(fleet, device)) is not None and st[1] == 1, 30, "agent online on v1")
    fleet.announce(device, 5, rollout_id=20)
    wait_until(lambda: (st := _state(fleet, device)) is not None and st[:2] == ("active", 5), 60, "v5 on probation")

    ts, values = simulated_series(20, seed=1, t0=1_700_300_000.0)  # 400 readings
    for i in range(0, len(ts), 50):
        batch = Readings(v=PROTOCOL_VERSION, readings=[
            Reading(ts=float(t), values={f: (None if np.isnan(v) else float(v)) for f, v in zip(FEATURES, row, strict=True)})
            for t, row in zip(ts[i:i + 50], values[i:i + 50], strict=True)])
        fleet.client.publish(device_topic(device, Channel.READINGS), encode(batch), qos=1).wait_for_publish(5)
        if i == 100:
            wait_until(lambda: (st := _state(fleet, device)) is not None and st[0] == "rolled_back", 30,
                       "rollback reported")
    st = _state(fleet, device)
    assert st is not None and st[1] == 1 and "probation: flags" in st[2], st
    # Every reading was scored (v5 until the rollback, v1 after): none waited for a model.
    wait_until(lambda: fleet.scored(device) == (len(ts) - WINDOW + 1, 1), 30, "every reading scored, v1 in front")
    rec = RecordFile(fleet.tmp / device / "state").load()
    assert (rec.state, rec.committed, rec.failed_version, rec.candidate) == (ModelState.ROLLED_BACK, 1, 5, None)


def test_an_anomaly_on_probation_is_judged_against_the_fallback_on_the_same_readings(fleet: Fleet) -> None:
    """A real anomaly arriving on probation makes a sound candidate flag far more than the running model did
    before the swap; judged against the fallback on the same readings (which flags it as well), the
    candidate is committed, not rolled back."""
    device = "gw-burst"
    _bundle(fleet.home, fleet.src, 6)  # v1's model and threshold under a new version: a sound candidate
    fleet.agent(device, "[update]\nmin_windows = 50\nprobation_s = 1", csv=False)
    wait_until(lambda: (st := _state(fleet, device)) is not None and st[1] == 1, 30, "agent online on v1")
    fleet.announce(device, 6, rollout_id=21)
    wait_until(lambda: _on(fleet, device, "active", 6), 60, "v6 on probation")

    ts, values = simulated_series(20, seed=1, t0=1_700_400_000.0)  # 400 readings
    values = values.copy()
    values[100:300] += 10 * np.nanstd(values, axis=0)  # a level shift on every channel: half the windows
    for i in range(0, len(ts), 50):
        batch = Readings(v=PROTOCOL_VERSION, readings=[
            Reading(ts=float(t), values={f: (None if np.isnan(v) else float(v)) for f, v in zip(FEATURES, row, strict=True)})
            for t, row in zip(ts[i:i + 50], values[i:i + 50], strict=True)])
        fleet.client.publish(device_topic(device, Channel.READINGS), encode(batch), qos=1).wait_for_publish(5)
    wait_until(lambda: fleet.scored(device)[0] >= len(ts) - WINDOW + 1, 30, "every reading scored")
    assert fleet.events(device, 6) >= 1  # the candidate did flag the shift
    wait_until(lambda: _on(fleet, device, "committed", 6), 30, "v6 committed")
    rec = RecordFile(fleet.tmp / device / "state").load()
    assert (rec.state, rec.committed, rec.failed_version) == (ModelState.COMMITTED, 6, None), rec


def test_a_first_model_meeting_anomalies_on_probation_is_kept(fleet: Fleet) -> None:
    """A gateway's first model has nothing to be compared with or rolled back to: anomalies arriving on its
    probation (most windows flagged from the first one) do not leave the gateway without a model."""
    device = "gw-first"
    _bundle(fleet.home, fleet.src, 7)  # a sound model
    fleet.agent(device, "[update]\nmin_windows = 50\nprobation_s = 1", csv=False, provisioned=False)
    wait_until(lambda: _state(fleet, device) is not None, 30, "agent online without a model")
    fleet.announce(device, 7, rollout_id=22)
    wait_until(lambda: _on(fleet, device, "active", 7), 60, "v7 on probation")

    ts, values = simulated_series(20, seed=1, t0=1_700_500_000.0)  # 400 readings
    values = values.copy()
    values[WINDOW:] += 10 * np.nanstd(values, axis=0)  # shifted from the first window's end on
    for i in range(0, len(ts), 50):
        batch = Readings(v=PROTOCOL_VERSION, readings=[
            Reading(ts=float(t), values={f: (None if np.isnan(v) else float(v)) for f, v in zip(FEATURES, row, strict=True)})
            for t, row in zip(ts[i:i + 50], values[i:i + 50], strict=True)])
        fleet.client.publish(device_topic(device, Channel.READINGS), encode(batch), qos=1).wait_for_publish(5)
    wait_until(lambda: _on(fleet, device, "committed", 7), 30, "v7 committed")
    wait_until(lambda: fleet.scored(device) == (len(ts) - WINDOW + 1, 7), 30, "every reading scored by v7")
    assert fleet.events(device, 7) >= 1  # it did flag the shift
    rec = RecordFile(fleet.tmp / device / "state").load()
    assert (rec.state, rec.committed, rec.failed_version) == (ModelState.COMMITTED, 7, None), rec


KILL_STATES = [ModelState.DOWNLOADING, ModelState.VERIFYING, ModelState.STAGED, ModelState.ACTIVE,
               ModelState.COMMITTED]


@pytest.mark.integration
def test_sigkill_at_every_state_boundary_boots_into_a_working_model(fleet: Fleet) -> None:
    """EDGESENTRY_TEST_KILL_AT=<state> SIGKILLs the agent right after it persists that state; restarted
    without it, each agent scores at once with a working model and finishes the update."""
    _bundle(fleet.home, fleet.src, 2)
    extra = "[update]\nmin_windows = 200\nprobation_s = 0.5"
    devices = {f"gw-kill-{s.value}": s for s in KILL_STATES}
    for device, s in devices.items():
        fleet.agent(device, extra, env={"EDGESENTRY_TEST_KILL_AT": s.value})
    for device in devices:
        _keeps_scoring_with(fleet, device, 1)
    fleet.announce(None, 2, rollout_id=0)
    for device, s in devices.items():
        assert fleet.procs[device].wait(60) == -signal.SIGKILL, device
        assert RecordFile(fleet.tmp / device / "state").load().state == s
    last_hb = fleet.last_heartbeat_id()
    for device in devices:
        fleet.agent(device, extra)
    for device, s in devices.items():
        # Boots into a model that scores (v1, or v2 when it was on probation or committed) ...
        expected_boot = 2 if s in (ModelState.ACTIVE, ModelState.COMMITTED) else 1
        wait_until(partial(_scored_beyond, fleet, device, 50, last_hb), 60, f"{device} scoring after restart")
        assert boot_version(fleet.tmp / device / "state") in (expected_boot, 2)
    for device in devices:
        # ... and the interrupted update completes: v2 committed, scoring.
        wait_until(partial(_on, fleet, device, "committed", 2), 60, f"{device}: v2 committed after the restart")
        _keeps_scoring_with(fleet, device, 2)
