"""`make bench`: speed and size figures for the exported model, measured on this machine.

1. raw interpreter throughput (windows/s) for int8 and float32, batch 1 (streaming) and batch 64;
2. an `edge-agent run` process behind a real broker: its idle RSS with the model loaded; readings/s end
   to end (until the agent's heartbeat says all were scored) for per-reading JSON (batches of 100) and
   for columnar .npy blocks (1000 rows a message).  ``columnar_vs_interpreter`` compares like with like:
   the raw int8 interpreter on the same model at the agent's batch (``max_batch`` windows a call), timed
   in the bench process right before and after the columnar run; one reading completes one window, so
   both sides count windows/s;
3. reading→report latency: single readings at 400/s with a spike every 64 (values from the simulator on
   its 20 Hz training time axis, stamps from the wall clock at publish); latency is anomaly event
   received − publish of the reading that completed the flagged window, through the broker, split at the
   event's ``detected_at`` (publish → detection: ingress, queue, scoring; detection → report: durable
   commit, publish, broker).  The same
   readings replayed through the agent's detector in process say which events must arrive; a spike that
   raises none fell into an already open episode (``latency_spikes_reported`` counts the others).
   The publisher writes each reading to its socket itself (``DirectWriteClient``, as a sensor would),
   and this process neither collects garbage nor holds the GIL longer than 0.5 ms meanwhile, so its
   own pauses do not count as the agent's;
4. bundle and model sizes, float32 vs int8;
5. hub ingest (``cloud_hub/ingest/bench.py``): stored anomaly events/s and sync rows/s on SQLite, in
   process and end to end through the broker, and in process on a local PostgreSQL when one is
   installed (``--only ingest`` runs just this part);
6. fleet rollout (``cloud_hub/rollout/bench.py``): seconds from `rollout start` to every one of 10, 50 and
   200 simulated agents healthy (``--only fleet`` runs just this part, on a quickly trained model).
"""

from __future__ import annotations

import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from cloud_hub.brokers import RunningBroker, mosquitto_path, start_amqtt, start_mosquitto
from cloud_hub.demo.simulator import FEATURES, DeviceSimulator
from cloud_hub.home import HubHome
from edge_agent.config import DetectorConfig
from shared import bundle as bundle_fmt
from shared.inference import TFLiteModel
from shared.metrics import cpu_seconds, percentile, rss_mb
from shared.mqtt import BrokerConfig, connect, make_client
from shared.mqtt_direct import DirectWriteClient
from shared.preprocessing import preprocess_windows, sliding_windows
from shared.protocol import (
    MAX_ACK_IDS,
    PROTOCOL_VERSION,
    Ack,
    Channel,
    Reading,
    Readings,
    decode,
    device_topic,
    encode,
    npy_topic,
)
from shared.readings import ReadingsBlock, encode_readings_npy

DEVICE = "bench-gw"
BENCH_REARM = 16  # [detector] rearm_readings of the benchmarked agent
# Single readings in the latency phase: this many times 64, at 400/s (~48 s; ~270 events, so the p99 is not
# just the second-worst sample).
LATENCY_SPIKES = 300
# What the machine does to any process's wake-ups meanwhile: a bare Python process sleeping 2.5 ms at a time
# (the readings' pacing) reports how late it woke (p50 / p99 / max, ms).  On an idle machine a few tens of µs;
# on a shared one it says how much of the agent's tail is the scheduler's.
_WAKEUP_PROBE = """
import json, sys, time
end, late = time.monotonic() + float(sys.argv[1]), []
while (t := time.monotonic()) < end:
    time.sleep(0.0025)
    late.append((time.monotonic() - t - 0.0025) * 1000)
late.sort()
print(json.dumps([late[len(late) // 2], late[int(len(late) * 0.99)], late[-1]]))
"""
AGENT_MAX_BATCH = DetectorConfig().max_batch  # the agent scores this many windows per interpreter call


@dataclass(frozen=True)
class _Export:
    """What the bench needs of an export (``cloud_hub.export.ExportResult`` or its cached form)."""

    bundle_dir: Path
    tflite_bytes: int
    size: int
    agreement: dict[str, Any]


_EXPORTS_FILE = "bench-exports.json"


def _cached_exports(home: HubHome) -> dict[str, _Export] | None:
    """The exports of an earlier ``--only fastpath`` run in the same workdir, if complete."""
    f = home.path / _EXPORTS_FILE
    if not f.is_file():
        return None
    out = {q: _Export(Path(e["bundle_dir"]), e["tflite_bytes"], e["size"], e["agreement"])
           for q, e in json.loads(f.read_text()).items()}
    return out if all((e.bundle_dir / bundle_fmt.MODEL_FILE).is_file() for e in out.values()) else None


def _train(home: HubHome, console: Console) -> dict[str, _Export]:
    from cloud_hub import training
    from cloud_hub.data import TrainingData
    from cloud_hub.export import Quantization, export

    segments = []
    for i in range(3):
        sim = DeviceSimulator(f"d{i}", i + 1, 45.0, 20.0)
        rows = [[np.nan if v is None else v for v in sim.reading(1.7e9 + k / 20).values()] for k in range(2400)]
        segments.append(np.asarray(rows))
    cfg = replace(home.config().training, epochs=15)
    with console.status("training the benchmark model…"):
        result = training.train(home, TrainingData(FEATURES, segments, "bench-sim", 7200), cfg)
    out = {}
    for q in (Quantization.INT8, Quantization.FLOAT32):
        with console.status(f"exporting {q.value}…"):
            e = export(home, result.version, q)
        out[q.value] = _Export(e.bundle_dir, e.tflite_bytes, e.size, e.agreement.__dict__)
    (home.path / _EXPORTS_FILE).write_text(json.dumps(
        {q: {**e.__dict__, "bundle_dir": str(e.bundle_dir)} for q, e in out.items()}))
    return out


def _interpreter_speed(model_bytes: bytes, window: np.ndarray) -> dict[str, float]:
    model = TFLiteModel(model_bytes)
    res = {}
    for batch, n in ((1, 3000), (64, 100)):
        x = np.repeat(window[None], batch, axis=0)
        model.predict(x)
        t = time.perf_counter()
        for _ in range(n):
            model.predict(x)
        res[f"batch{batch}_windows_per_s"] = round(batch * n / (time.perf_counter() - t), 1)
    return res


class _Watcher:
    """Collects the agent's heartbeats and anomaly events through the broker."""

    def __init__(self, broker: BrokerConfig) -> None:
        self.cond = threading.Condition()
        self.scored = 0
        self.received = 0
        self.heartbeats = 0
        self.events: list[tuple[float, float]] = []  # (event ts, received at)
        self.detected: dict[float, float] = {}  # event ts -> the agent's detected_at (same machine, same clock)
        self._unacked: list[str] = []  # event ids received, not yet acknowledged
        self.client = make_client(broker, "bench-watch", persistent=False)
        self.client.on_connect = lambda c, *_: c.subscribe(
            [(device_topic(DEVICE, Channel.HEARTBEAT), 0), (device_topic(DEVICE, Channel.ANOMALY), 1)])
        self.client.on_message = self._on_message
        connect(self.client, broker)

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        now = time.time()
        with self.cond:
            if msg.topic.endswith("/heartbeat"):
                hb = decode(Channel.HEARTBEAT, msg.payload)
                self.scored, self.received = hb.readings_scored, hb.readings_received
                self.heartbeats += 1
            else:
                event = decode(Channel.ANOMALY, msg.payload)
                self.events.append((event.ts, now))
                self.detected.setdefault(event.ts, event.detected_at)
                self._unacked.append(event.event_id)
            self.cond.notify_all()
            # Acknowledged as the hub does once events are stored, in batches (each heartbeat, every 0.25 s, or
            # MAX_ACK_IDS ids): without it the agent's outbox re-sends every event after ack_timeout_s (30 s), and
            # the re-sends of the throughput phases' events would run during the latency phase, which an agent
            # with a hub never sees.
            if self._unacked and (msg.topic.endswith("/heartbeat") or len(self._unacked) >= MAX_ACK_IDS):
                ids, self._unacked = self._unacked, []
            else:
                ids = []
        if ids:
            ack = Ack(v=PROTOCOL_VERSION, device=DEVICE, ids=ids)
            self.client.publish(device_topic(DEVICE, Channel.ACK), encode(ack), qos=1)

    def wait(self, predicate: Any, timeout_s: float) -> bool:
        with self.cond:
            return bool(self.cond.wait_for(lambda: predicate(self), timeout_s))


def _agent_e2e(workdir: Path, broker: RunningBroker, home: HubHome, bundle_dir: Path) -> dict[str, Any]:
    from edge_agent.model_store import ModelStore
    from edge_agent.update import provision
    from shared.signing import parse_public_key

    state = workdir / "agent-state"
    shutil.rmtree(state, ignore_errors=True)
    store = ModelStore(state, [parse_public_key(home.public_key())])
    archive = bundle_fmt.pack(bundle_fmt.read_dir(bundle_dir))
    version = store.install(archive).manifest.version
    provision(state, version)
    conf = workdir / "agent.toml"
    conf.write_text(f"""device_id = "{DEVICE}"
state_dir = "{state}"
trusted_keys = ["{home.public_key()}"]
heartbeat_s = 0.25
[broker]
url = "{broker.url}"
[detector]
rearm_readings = {BENCH_REARM}
[sync]
enabled = false
""")
    log = open(workdir / "agent.log", "wb")  # noqa: SIM115
    agent = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "run", "--config", str(conf)],
                             stdout=log, stderr=subprocess.STDOUT)
    cfg = BrokerConfig(url=broker.url)
    watcher = _Watcher(cfg)
    # A sensor writes its readings itself: no hand-off to paho's network thread before they leave.
    pub = make_client(cfg, "bench-pub", persistent=False, client_class=DirectWriteClient)
    connect(pub, cfg)
    topic = device_topic(DEVICE, Channel.READINGS)
    sim = DeviceSimulator(DEVICE, 9, 45.0, 20.0)
    try:
        if not watcher.wait(lambda w: w.heartbeats > 0, 30):
            raise RuntimeError("agent did not start")
        window = store.load(version).manifest.preprocessing.window
        features = store.load(version).manifest.preprocessing.features
        watcher.wait(lambda w: w.heartbeats >= 4, 10)  # a second of idling: heartbeats only
        rss_idle = round(rss_mb(agent.pid), 1)

        # Throughput: 20k readings in batches of 100, as fast as the broker takes them.
        n = 20_000
        t_sample = 1.7e9
        msgs = []
        for i in range(0, n, 100):
            rs = [Reading(ts=t_sample + (i + k) / 20, values=sim.reading(t_sample + (i + k) / 20)) for k in range(100)]
            msgs.append(encode(Readings(v=PROTOCOL_VERSION, readings=rs)))
        start = time.perf_counter()
        for m in msgs:
            pub.publish(topic, m, qos=1)
        # The first window - 1 readings complete no window; every later one is scored.
        if not watcher.wait(lambda w: w.received >= n and w.scored >= n - window + 1, 300):
            raise RuntimeError(f"agent received {watcher.received}, scored {watcher.scored} of {n} readings")
        throughput = n / (time.perf_counter() - start)

        # Columnar: 100k readings as .npy blocks of 1000 rows on the readings/npy topic.
        n_col, block = 100_000, 1000
        col_ts = t_sample + (n + np.arange(n_col)) / 20
        table = np.array([[np.nan if (v := sim.reading(float(t)).get(f)) is None else v for f in features]
                          for t in col_ts[:2000]])
        col_values = np.tile(table, (n_col // len(table), 1))
        blocks = [encode_readings_npy(col_ts[i : i + block], col_values[i : i + block]) for i in range(0, n_col, block)]
        # Like with like: the raw interpreter on the same model, at the agent's batch (max_batch), on windows of
        # the same data, measured in this process right before and right after the columnar run (the agent
        # idles meanwhile), so a shared machine's load changes both sides alike.
        interp_model = TFLiteModel((bundle_dir / bundle_fmt.MODEL_FILE).read_bytes())
        agent_batch = AGENT_MAX_BATCH
        interp_windows = preprocess_windows(sliding_windows(table[: agent_batch + window - 1], window),
                                            store.load(version).manifest.preprocessing)
        interp_before, interp_cpu_before = _interpreter_rate(interp_model, interp_windows)
        start, agent_cpu = time.perf_counter(), cpu_seconds(agent.pid)
        for m in blocks:
            pub.publish(npy_topic(topic), m, qos=1)
        # Scored, not just received: the clock stops when the agent has scored the last window.
        if not watcher.wait(lambda w: w.received >= n + n_col and w.scored >= n + n_col - window + 1, 600):
            raise RuntimeError(f"agent received {watcher.received}, scored {watcher.scored} of {n + n_col} readings")
        columnar = n_col / (time.perf_counter() - start)
        columnar_cpu = n_col / (cpu_seconds(agent.pid) - agent_cpu)  # every agent thread, paho's included
        interp_after, interp_cpu_after = _interpreter_rate(interp_model, interp_windows)
        del interp_model

        latency = _latency_phase(watcher, pub, topic, sim, store.load(version), t_sample + (n + n_col) / 20)
    finally:
        agent.terminate()
        agent.wait(30)
        for c in (pub, watcher.client):
            c.disconnect()
            c.loop_stop()
    interp_mean = (interp_before + interp_after) / 2
    return {
        "broker": broker.kind,
        "rss_idle_mb": rss_idle,
        "readings_per_s": round(throughput, 1),
        "readings": n,
        "columnar_npy_readings_per_s": round(columnar, 1),
        "columnar_readings": n_col,
        "interpreter_batch": agent_batch,
        "interpreter_windows_per_s_before_columnar": round(interp_before, 1),
        "interpreter_windows_per_s_after_columnar": round(interp_after, 1),
        # One reading completes one window: readings/s and windows/s are the same unit here.
        "columnar_vs_interpreter": round(columnar / interp_mean, 3),
        # The same comparison per CPU second (agent process vs the interpreter's thread): robust to load.
        "columnar_readings_per_cpu_s": round(columnar_cpu, 1),
        "interpreter_windows_per_cpu_s": round((interp_cpu_before + interp_cpu_after) / 2, 1),
        "columnar_vs_interpreter_cpu": round(2 * columnar_cpu / (interp_cpu_before + interp_cpu_after), 3),
        **latency,
    }


def _interpreter_rate(model: TFLiteModel, windows: np.ndarray, seconds: float = 2.0) -> tuple[float, float]:
    """Windows per wall second and per CPU second (this thread) of ``model.predict`` on ``windows`` (one
    batch), timed for about ``seconds``."""
    model.predict(windows)
    calls, start, cpu = 0, time.perf_counter(), time.thread_time()
    while (elapsed := time.perf_counter() - start) < seconds:
        model.predict(windows)
        calls += 1
    return len(windows) * calls / elapsed, len(windows) * calls / (time.thread_time() - cpu)


def _publish_paced(pub: Any, topic: str, sim: DeviceSimulator, sim_t0: float, features: list[str], rate: float,
                   n: int, gap: int) -> tuple[list[float], list[list[float]], list[int]]:
    """Publish ``n`` single readings at ``rate``/s, a spike on the first feature every ``gap``; returns the
    publish stamps (each reading's ``ts``), the values in ``features`` order and the spikes' indices."""
    sent_ts: list[float] = []
    sent_values: list[list[float]] = []
    spike_idx: list[int] = []
    t0 = time.monotonic()
    for i in range(n):
        values = sim.reading(sim_t0 + i / 20)
        if i % gap == gap - 1:
            values = {**values, FEATURES[0]: 60.0}
            spike_idx.append(i)
        now = time.time()
        pub.publish(topic, encode(Readings(v=PROTOCOL_VERSION, readings=[Reading(ts=now, values=values)])), qos=1)
        sent_ts.append(now)
        sent_values.append([np.nan if (v := values.get(f)) is None else v for f in features])
        delay = t0 + (i + 1) / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # pacing the synthetic sensor
    return sent_ts, sent_values, spike_idx


def _reference_events(bundle: bundle_fmt.Bundle, ts: np.ndarray, values: np.ndarray) -> list[float]:
    """The events the agent must raise on these readings: its own detector and tracker, in this process."""
    from edge_agent.detector import ActiveModel, EpisodeTracker, StreamingDetector

    det = StreamingDetector(max_future_s=None)
    det.swap(ActiveModel.from_bundle(bundle))
    tracker = EpisodeTracker(BENCH_REARM)
    features = tuple(bundle.manifest.preprocessing.features)
    expected: list[float] = []
    for s in range(0, len(ts), 1000):
        scored = det.push_block(ReadingsBlock(ts[s : s + 1000], features, values[s : s + 1000])).scored
        if scored is not None:
            expected += [float(scored.ts[i]) for i in tracker.starts(scored.anomalous)]
    return expected


def _latency_phase(watcher: _Watcher, pub: Any, topic: str, sim: DeviceSimulator, bundle: bundle_fmt.Bundle,
                   sim_t0: float) -> dict[str, Any]:
    """Single readings at 400/s, a spike every 64; reading → report latency and what became of each spike.

    Values come from the simulator on its own 20 Hz time axis (the data the model was trained on);
    each reading is stamped with the wall clock when it is published.  An anomaly event's ``ts`` is the
    stamp of the reading that completed the flagged window, so ``received − ts`` is exactly reading
    publish → report received, both through the broker.  The same readings are replayed in this process
    through the agent's detector and episode tracker: the events it raises are the events the agent must
    raise, and a spike that raises none fell into an episode that was already open (one event per episode).
    """
    rate, gap = 400.0, 64
    features = bundle.manifest.preprocessing.features
    window = bundle.manifest.preprocessing.window
    with watcher.cond:
        watcher.events.clear()
        watcher.detected.clear()
        received_before, scored_before = watcher.received, watcher.scored
    # This process's own pauses must not count as the agent's: no collection of its heap (the columnar
    # phase's and, on a first run, TensorFlow's objects) while readings are in flight, and the watcher's
    # thread gets the GIL within 0.5 ms (CPython's default switch interval is 5 ms), as in the agent.
    switch = sys.getswitchinterval()
    gc.collect()
    gc.freeze()
    gc.disable()
    sys.setswitchinterval(0.0005)
    try:
        probe = subprocess.Popen([sys.executable, "-c", _WAKEUP_PROBE, str(LATENCY_SPIKES * gap / rate)],
                                 stdout=subprocess.PIPE, text=True)
        sent_ts, sent_values, spike_idx = _publish_paced(pub, topic, sim, sim_t0, features, rate,
                                                         LATENCY_SPIKES * gap, gap)
        # Until the agent has scored every reading: the reference below must not take its CPU meanwhile.
        n = len(sent_ts)
        watcher.wait(lambda w: w.received >= received_before + n and w.scored >= scored_before + n, 30)
    finally:
        sys.setswitchinterval(switch)
        gc.enable()
        gc.unfreeze()
    wakeup = json.loads(probe.communicate(timeout=60)[0])
    ts_arr = np.asarray(sent_ts)
    # Compare from the first spike the reference can score on (the agent's buffer already held older rows).
    first = ts_arr[window - 1]
    expected = [t for t in _reference_events(bundle, ts_arr, np.asarray(sent_values)) if t > first]
    watcher.wait(lambda w: {t for t, _ in w.events} >= set(expected), 30)
    with watcher.cond:
        received: dict[float, float] = {}
        for t, recv in watcher.events:  # the first delivery: the outbox re-sends what no hub acknowledges
            if t > first:
                received.setdefault(t, recv)
        detected = dict(watcher.detected)
    latencies = [(received[t] - t) * 1000 for t in expected if t in received]
    # The split: publish → the agent's decision (ingress, queue, scoring) and decision → received (event
    # built, durable commit, publish, broker, this process).
    to_detect = [(detected[t] - t) * 1000 for t in expected if t in received]
    to_report = [(received[t] - detected[t]) * 1000 for t in expected if t in received]
    spike_ts = ts_arr[spike_idx]
    # A spike is reported when an event's window ends at or after it and still contains it.
    event_ts = np.asarray(sorted(received))
    reported = 0
    for s in spike_ts[spike_ts > first]:
        k = int(np.searchsorted(event_ts, s, side="left"))
        reported += int(k < len(event_ts) and event_ts[k] <= s + (window - 1) / rate + 1e-3)
    return {
        "latency_spikes": int((spike_ts > first).sum()),
        "latency_spikes_reported": reported,
        "latency_events_expected": len(expected),
        "latency_events_received": len(received),
        "latency_events_missing": len(set(expected) - set(received)),
        "latency_ms_p50": round(percentile(latencies, 50), 2) if latencies else None,
        "latency_ms_p99": round(percentile(latencies, 99), 2) if latencies else None,
        "latency_ms_max": round(max(latencies), 2) if latencies else None,
        "latency_ms_to_detection_p50": round(percentile(to_detect, 50), 2) if to_detect else None,
        "latency_ms_to_detection_p99": round(percentile(to_detect, 99), 2) if to_detect else None,
        "latency_ms_detection_to_report_p50": round(percentile(to_report, 50), 2) if to_report else None,
        "latency_ms_detection_to_report_p99": round(percentile(to_report, 99), 2) if to_report else None,
        # A bare process's lateness waking from 2.5 ms sleeps during the phase: the machine's share of the tail.
        "machine_wakeup_late_ms_p50": round(wakeup[0], 3),
        "machine_wakeup_late_ms_p99": round(wakeup[1], 3),
        "machine_wakeup_late_ms_max": round(wakeup[2], 3),
    }



def _start_broker(workdir: Path, broker_url: str | None) -> RunningBroker:
    if broker_url:
        from shared.mqtt import parse_url

        _, port, _ = parse_url(broker_url)
        return RunningBroker("external", port, subprocess.Popen(["true"]), workdir)
    return start_mosquitto(workdir=workdir) if mosquitto_path() else start_amqtt(workdir=workdir)


def _ingest(workdir: Path, broker: RunningBroker, console: Console) -> dict[str, Any]:
    from cloud_hub.db.local_postgres import postgres_bin, start_postgres
    from cloud_hub.ingest.bench import ingest_in_process, ingest_through_broker

    with console.status("hub ingest in process (decode → batch → commit → ack)…"):
        in_process = ingest_in_process(workdir, broker)
    with console.status(f"hub ingest end to end through {broker.kind}…"):
        through_broker = ingest_through_broker(workdir, broker)
    results = {"in_process": in_process, "through_broker": through_broker}
    if postgres_bin() is not None:  # a local server with default (durable) settings
        with console.status("hub ingest in process on PostgreSQL…"):
            pg = start_postgres(fast=False)
            try:
                results["in_process_postgresql"] = ingest_in_process(workdir, broker,
                                                                     database_url=pg.create_database("bench"))
            finally:
                from cloud_hub.db import dispose_engines

                dispose_engines()
                pg.stop()
    return results


def _ingest_rows(table: Table, ingest: dict[str, Any]) -> None:
    for part, figures in ingest.items():
        for k, v in figures.items():
            table.add_row(f"hub ingest {part.replace('_', ' ')} {k}", str(v))


def run_ingest_bench(workdir: Path, out: Path, broker_url: str | None, console: Console | None = None
                     ) -> dict[str, Any]:
    """Only the hub ingest figures (no training): ``cloud-hub bench --only ingest``."""
    console = console or Console()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    broker = _start_broker(workdir, broker_url)
    try:
        results = {"machine": {"python": platform.python_version(), "platform": platform.platform(),
                               "cpus": os.cpu_count(), "load_1min": round(os.getloadavg()[0], 1)},
                   "ingest": _ingest(workdir, broker, console)}
    finally:
        broker.stop()
    out.write_text(json.dumps(results, indent=2))
    table = Table(title="edgesentry bench: hub ingest (SQLite; PostgreSQL where installed)", show_header=True)
    table.add_column("measure")
    table.add_column("value", justify="right")
    _ingest_rows(table, results["ingest"])
    console.print(table)
    console.print(f"written to {out}")
    return results


def _fleet(workdir: Path, broker: RunningBroker, bundle_dir: Path, console: Console) -> dict[str, Any]:
    from cloud_hub.rollout.bench import fleet_rollout

    results = {}
    for n in (10, 50, 200):
        with console.status(f"fleet rollout to {n} simulated agents through {broker.kind}…"):
            results[str(n)] = fleet_rollout(workdir, broker, bundle_dir, n)
    return results


def _fleet_rows(table: Table, fleet: dict[str, Any]) -> None:
    for n, figures in fleet.items():
        table.add_row(f"fleet rollout {n} agents: seconds to all healthy", str(figures["seconds_to_all_healthy"]))


def run_fleet_bench(workdir: Path, out: Path, broker_url: str | None, console: Console | None = None
                    ) -> dict[str, Any]:
    """Only the fleet rollout figures, on a model trained for 2 epochs: ``cloud-hub bench --only fleet``."""
    from cloud_hub import training
    from cloud_hub.data import TrainingData
    from cloud_hub.export import Quantization, export

    console = console or Console()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    home = HubHome(workdir / "hub")
    home.init()
    sim = DeviceSimulator("d0", 1, 45.0, 20.0)
    rows = np.asarray([[np.nan if v is None else v for v in sim.reading(1.7e9 + k / 20).values()] for k in range(2400)])
    with console.status("training a small model for the bundle…"):
        version = training.train(home, TrainingData(FEATURES, [rows], "bench-sim", 2400),
                                 replace(home.config().training, epochs=2)).version
        bundle_dir = export(home, version, Quantization.INT8).bundle_dir
    broker = _start_broker(workdir, broker_url)
    try:
        results = {"machine": {"python": platform.python_version(), "platform": platform.platform(),
                               "cpus": os.cpu_count(), "load_1min": round(os.getloadavg()[0], 1)},
                   "fleet": _fleet(workdir, broker, bundle_dir, console)}
    finally:
        broker.stop()
    out.write_text(json.dumps(results, indent=2))
    table = Table(title=f"edgesentry bench: fleet rollout through {broker.kind}", show_header=True)
    table.add_column("measure")
    table.add_column("value", justify="right")
    _fleet_rows(table, results["fleet"])
    console.print(table)
    console.print(f"written to {out}")
    return results


def run_bench(workdir: Path, out: Path, broker_url: str | None, console: Console | None = None,
              only: str = "all") -> dict[str, Any]:
    """All sections; ``only="fastpath"`` skips hub ingest and keeps the trained model in ``workdir``
    between runs (repeat the agent measurements without retraining)."""
    console = console or Console()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    home = HubHome(workdir / "hub")
    exports = _cached_exports(home) if only == "fastpath" else None
    if exports is None:
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        home.init()
        exports = _train(home, console)
    else:
        console.print(f"reusing the model trained in {home.path}")
    with np.load(home.models_dir / "1" / "calibration.npz", allow_pickle=False) as cal:
        window = cal["x_val"][0]  # a held-out normal window, as the detector saved it
    results: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_1min": round(os.getloadavg()[0], 1)},
        "model": {"name": "ae-lstm", "window": int(window.shape[0]), "features": int(window.shape[1])},
        "sizes": {q: {"tflite_bytes": e.tflite_bytes, "bundle_bytes": e.size} for q, e in exports.items()},
        "agreement": {q: e.agreement for q, e in exports.items()},
        "interpreter": {},
    }
    for q, e in exports.items():
        model_bytes = (e.bundle_dir / bundle_fmt.MODEL_FILE).read_bytes()
        results["interpreter"][q] = _interpreter_speed(model_bytes, window)
        results["interpreter"]["runtime"] = TFLiteModel(model_bytes).runtime.value

    broker = _start_broker(workdir, broker_url)
    try:
        with console.status(f"agent end to end through {broker.kind}…"):
            results["agent_e2e_int8"] = _agent_e2e(workdir, broker, home, exports["int8"].bundle_dir)
        if only != "fastpath":
            results["ingest"] = _ingest(workdir, broker, console)
        if only != "fastpath":
            results["fleet"] = _fleet(workdir, broker, exports["int8"].bundle_dir, console)
    finally:
        broker.stop()

    out.write_text(json.dumps(results, indent=2))
    table = Table(title="edgesentry bench", show_header=True)
    table.add_column("measure")
    table.add_column("value", justify="right")
    for q in exports:
        for k, v in results["interpreter"][q].items():
            table.add_row(f"interpreter {q} {k}", str(v))
        table.add_row(f"{q} tflite / bundle bytes", f"{results['sizes'][q]['tflite_bytes']} / {results['sizes'][q]['bundle_bytes']}")
    for k, v in results["agent_e2e_int8"].items():
        table.add_row(f"agent e2e {k}", str(v))
    if "ingest" in results:
        _ingest_rows(table, results["ingest"])
    if "fleet" in results:
        _fleet_rows(table, results["fleet"])
    console.print(table)
    console.print(f"written to {out}")
    return results
