"""The fleet part of ``make bench``: seconds from `rollout start` to every device healthy, for N simulated
agents on a real broker with the real hub (`serve`'s HubServer and rollout engine, SQLite).

A simulated agent is the agent's update path without the interpreter: it verifies the signed announcement
on its own model topic (Ed25519), asks for the bundle, assembles the chunks (size and SHA-256 against the
announcement), verifies the bundle's signature and manifest (``shared.bundle.load_archive``), and reports
downloading → verifying → staged → active → committed on its retained status topic.  It does not load the
model into LiteRT and has no probation (both are per-gateway work that does not load the hub).  Agents
run ``AGENTS_PER_PROCESS`` to a process, each with its own MQTT connection.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from sqlalchemy import func, select

from cloud_hub import db
from cloud_hub.brokers import RunningBroker
from cloud_hub.home import HubHome
from cloud_hub.ingest.service import HubServer
from cloud_hub.rollout.api import start_rollout
from cloud_hub.rollout.waves import Gates, Selector
from shared import bundle as bundle_fmt
from shared import protocol as p
from shared.decision import DecisionParams
from shared.mqtt import BrokerConfig, connect, make_client
from shared.signing import parse_public_key

AGENTS_PER_PROCESS = 50


class SimAgent:
    """One gateway's update path over its own MQTT connection (see the module docstring)."""

    def __init__(self, device: str, cfg: BrokerConfig, public_key: str) -> None:
        from edge_agent.model_store import Assembly

        self._assembly_cls = Assembly
        self.device = device
        self.trusted = [parse_public_key(public_key)]
        self.version: int | None = None
        self.assembly: Any = None
        self.rejected = 0
        self.lock = threading.Lock()
        self.client = make_client(cfg, f"sim-{device}", persistent=False)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        connect(self.client, cfg)

    def _topic(self, ch: p.Channel) -> str:
        return p.device_topic(self.device, ch)

    def _on_connect(self, client: mqtt.Client, *_: object) -> None:
        client.subscribe([(self._topic(p.Channel.MODEL), 1), (self._topic(p.Channel.MODEL_CHUNK), 1)])

    def status(self, state: p.ModelState, rollout_id: int | None = None, failed: int | None = None,
               error: str = "") -> None:
        msg = p.Status(v=p.PROTOCOL_VERSION, device=self.device, ts=time.time(), state=p.AgentState.ONLINE,
                       model_state=state, model_version=self.version, agent_version="sim", runtime="none",
                       error=error, failed_version=failed, rollout_id=rollout_id, msg_id=uuid.uuid4().hex)
        self.client.publish(self._topic(p.Channel.STATUS), p.encode(msg), qos=1, retain=True)

    def telemetry(self, scored: int, flagged: int) -> None:
        """Report ``scored`` windows of which ``flagged`` were flagged, under the running model."""
        msg = p.Telemetry(v=p.PROTOCOL_VERSION, device=self.device, ts=time.time(), interval_s=10.0, scored=scored,
                          score_mean=0.1, score_max=1.0, readings_scored_total=scored, msg_id=uuid.uuid4().hex,
                          flagged=flagged, model_version=self.version)
        self.client.publish(self._topic(p.Channel.TELEMETRY), p.encode(msg), qos=1)

    def _on_message(self, client: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        from edge_agent.update import verified_announcement

        try:
            with self.lock:
                if msg.topic == self._topic(p.Channel.MODEL):
                    if not msg.payload:
                        return
                    ann = verified_announcement(self.trusted, msg.payload)
                    if ann.version == self.version or (self.assembly and self.assembly.announcement == ann):
                        return  # running it, or already fetching it (as the agent's update machine does)
                    self.assembly = self._assembly_cls(ann)
                    self.status(p.ModelState.DOWNLOADING, ann.rollout_id)
                    request = p.ModelRequest(v=p.PROTOCOL_VERSION, device=self.device, version=ann.version)
                    client.publish(self._topic(p.Channel.MODEL_REQUEST), p.encode(request), qos=1)
                else:
                    self._chunk(p.decode(p.Channel.MODEL_CHUNK, msg.payload))
        except (p.ProtocolError, ValueError):
            self.rejected += 1

    def _chunk(self, chunk: p.ModelChunk) -> None:
        asm = self.assembly
        if asm is None or not asm.add(chunk):
            return
        ann, self.assembly = asm.announcement, None
        self.status(p.ModelState.VERIFYING, ann.rollout_id)
        try:
            bundle = bundle_fmt.load_archive(asm.archive(), self.trusted)  # size, SHA-256, signatures, manifest
            if bundle.manifest.version != ann.version:
                raise ValueError(f"bundle says version {bundle.manifest.version}, announced {ann.version}")
        except (bundle_fmt.BundleError, ValueError) as exc:
            self.status(p.ModelState.FAILED, ann.rollout_id, ann.version, str(exc))
            return
        self.status(p.ModelState.STAGED, ann.rollout_id)
        self.version = ann.version
        self.status(p.ModelState.ACTIVE, ann.rollout_id)
        self.status(p.ModelState.COMMITTED, ann.rollout_id)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _agents_process(url: str, devices: list[str], public_key: str, ready: Any, stop: Any) -> None:
    cfg = BrokerConfig(url=url)
    agents = [SimAgent(d, cfg, public_key) for d in devices]
    for a in agents:
        if not a.subscribed.wait(60):
            raise RuntimeError(f"{a.device} not subscribed")
        a.status(p.ModelState.NONE)
    ready.release()
    stop.wait()
    for a in agents:
        a.close()


def signed_copy(home: HubHome, bundle_dir: Path, version: int, *, source: str = "bench",
                decision: DecisionParams | None = None, model: bytes | None = None) -> Path:
    """The exported bundle re-signed with this hub's key and registered as ``version`` (optionally with
    another decision or another model: tests use it to build bad candidates)."""
    files = bundle_fmt.read_dir(bundle_dir)
    m = bundle_fmt.parse_manifest(files[bundle_fmt.MANIFEST])
    model = model or files[bundle_fmt.MODEL_FILE]
    manifest = bundle_fmt.build_manifest(name=m.name, version=version, preprocessing=m.preprocessing,
                                         scoring=m.scoring, decision=decision or m.decision,
                                         quantization=m.quantization,
                                         files={bundle_fmt.MODEL_FILE: model}, likelihood=m.likelihood)
    archive = bundle_fmt.pack(bundle_fmt.signed_files(manifest, {bundle_fmt.MODEL_FILE: model}, home.signing_key()))
    path = home.path / f"v{version}.tar.gz"
    path.write_bytes(archive)
    with home.sessions()() as s:
        s.add(db.ModelVersion(version=version, name=m.name, source=source, artifacts_dir=""))
        s.add(db.Bundle(version=version, quantization="int8", path=str(path), size=len(archive),
                        sha256=bundle_fmt.sha256_hex(archive)))
        s.commit()
    return path


def _poll(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.02) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)  # polling the database another thread writes: a measurement, not a handshake


def fleet_rollout(workdir: Path, broker: RunningBroker, bundle_dir: Path, n: int, timeout_s: float = 120
                  ) -> dict[str, Any]:
    """Roll a bundle out to ``n`` simulated agents in one wave; seconds until the rollout completed."""
    home = HubHome(workdir / f"fleet-hub-{n}")
    home.init(broker.url, force=True)
    text = home.config_path.read_text().replace(f'url = "{broker.url}"\n',
                                                f'url = "{broker.url}"\nclient_id = "bench-fleet-{n}"\n')
    home.config_path.write_text(text)
    archive = signed_copy(home, bundle_dir, 1)
    server = HubServer(home)
    server.start()
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Semaphore(0), ctx.Event()
    names = [f"sim-{i:04d}" for i in range(n)]
    procs = [ctx.Process(target=_agents_process, daemon=True,
                         args=(broker.url, names[i : i + AGENTS_PER_PROCESS], home.public_key(), ready, stop))
             for i in range(0, n, AGENTS_PER_PROCESS)]
    try:
        for proc in procs:
            proc.start()
        for _ in procs:
            if not ready.acquire(timeout=180):
                raise RuntimeError("a simulated-agent process did not start")

        def online() -> int:
            with home.sessions()() as s:
                return int(s.scalar(select(func.count()).select_from(db.Device).where(db.Device.online.is_(True))) or 0)

        _poll(lambda: online() == n, 60, f"{n} simulated agents online at the hub")
        t0 = time.perf_counter()
        rid = start_rollout(home, 1, Selector(), [100], Gates(wait_s=timeout_s), "int8")

        def state() -> db.RolloutState:
            with home.sessions()() as s:
                r = s.get(db.Rollout, rid)
                assert r is not None
                return r.state

        _poll(lambda: state() != db.RolloutState.RUNNING, timeout_s, "the rollout to end")
        seconds = time.perf_counter() - t0
        with home.sessions()() as s:
            healthy = int(s.scalar(select(func.count()).select_from(db.RolloutDevice).where(
                db.RolloutDevice.rollout_id == rid, db.RolloutDevice.state == db.DeviceRolloutState.HEALTHY)) or 0)
            committed = int(s.scalar(select(func.count()).select_from(db.Device).where(
                db.Device.model_version == 1, db.Device.model_state == "committed")) or 0)
        if healthy != n or committed != n or state() != db.RolloutState.COMPLETED:
            raise RuntimeError(f"rollout {state().value}: {healthy}/{n} healthy, {committed}/{n} committed")
        size = archive.stat().st_size
        return {"agents": n, "processes": len(procs), "bundle_bytes": size,
                "chunks_per_agent": math.ceil(size / p.CHUNK_BYTES), "seconds_to_all_healthy": round(seconds, 2),
                "engine_tick_s": server.cfg.rollout.tick_s, "model_requests": server.received["model/request"]}
    finally:
        stop.set()
        for proc in procs:
            if proc.pid is None:
                continue
            proc.join(30)
            if proc.is_alive():
                proc.terminate()
        server.stop()


def fleet_bench(workdir: Path, broker: RunningBroker, bundle_dir: Path, sizes: tuple[int, ...] = (10, 50, 200)
                ) -> dict[str, Any]:
    return {str(n): fleet_rollout(workdir, broker, bundle_dir, n) for n in sizes}
