"""The ingest part of ``make bench``: stored anomaly events/s and sync rows/s on SQLite.

1. The ingest path in one process: pre-encoded messages handed to :meth:`HubServer.feed` (what the MQTT
   thread does: decode, validate, enqueue), the writer batching and committing them and publishing the
   hub's ``Ack``s to a real broker; timed until the last row is stored.
2. End to end through Mosquitto: several publisher processes send QoS-1 anomaly events as fast as the
   broker takes them to a hub connected like ``cloud-hub serve``; timed from the start signal until
   the last event is stored.
Both verify the stored count in the database afterwards.  Besides the wall-clock rate each reports
the rate per CPU-second of the hub process (``*_per_cpu_s``): on a shared, loaded machine the wall
clock mostly measures the other tenants.  The in-process run also splits the CPU per event by stage:
``intake_us_per_event`` (the MQTT thread's part: paho's message object, topic, decode + validate,
enqueue), ``writer_us_per_event`` (rows, idempotent insert, commit, Acks, PUBACKs) and the rest of the
process (paho's network thread publishing the Acks, the hub's other threads).
"""

from __future__ import annotations

import multiprocessing as mp
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from cloud_hub import db
from cloud_hub.brokers import RunningBroker
from cloud_hub.home import HubHome
from cloud_hub.ingest.service import HubServer, tune_gc
from shared import protocol as p
from shared.mqtt import BrokerConfig, connect, make_client


def _home(path: Path, broker_url: str, client_id: str, database_url: str = "") -> HubHome:
    home = HubHome(path)
    home.init(broker_url, force=True, database_url=database_url)
    text = home.config_path.read_text().replace(f'url = "{broker_url}"\n',
                                                f'url = "{broker_url}"\nclient_id = "{client_id}"\n')
    home.config_path.write_text(text)
    return home


def _events(device: str, n: int) -> list[bytes]:
    now = time.time()
    return [p.encode(p.AnomalyEvent(v=p.PROTOCOL_VERSION, event_id=uuid.uuid4().hex, device=device, ts=now + i,
                                    detected_at=now + i, score=5.0, threshold=1.0, model_version=1,
                                    top_features=["temp", "power"], attribution={"temp": 0.7, "power": 0.2},
                                    likelihood=0.99)) for i in range(n)]


def _sync_batches(device: str, n: int, rows: int) -> list[bytes]:
    return [p.encode(p.SyncBatch(v=p.PROTOCOL_VERSION, device=device, batch_id=uuid.uuid4().hex,
                                 features=["temp", "power", "vibration"],
                                 rows=[[1.7e9 + b * rows + i, 20.0 + i % 7, None if i % 50 == 0 else 1.5, 0.01 * i]
                                       for i in range(rows)], flags=[0] * rows)) for b in range(n)]


def _count(home: HubHome, model: type) -> int:
    with home.sessions()() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def _wait_stored(server: HubServer, channel: str, n: int, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while server.stored[channel] < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {server.stored[channel]} of {n} {channel} messages stored")
        server.idle.wait(0.01)
    return time.perf_counter()


def ingest_in_process(workdir: Path, broker: RunningBroker, events: int = 50_000, devices: int = 10,
                      sync_batches: int = 400, sync_rows: int = 100, database_url: str = "") -> dict[str, Any]:
    """``database_url`` empty: SQLite in the bench's hub home; else that (empty) database, e.g. PostgreSQL."""
    # Its own session id per database: the broker keeps a session's subscriptions, so reusing the SQLite
    # run's id would queue the end-to-end run's events for this one.
    home = _home(workdir / ("ingest-hub-pg" if database_url else "ingest-hub"), broker.url,
                 "bench-hub-in-process" + ("-pg" if database_url else ""), database_url)
    server = HubServer(home)
    server.start()
    tune_gc()  # as `serve` does
    try:
        per = events // devices
        msgs = [(p.device_topic(f"gw-{d}", p.Channel.ANOMALY), m) for d in range(devices)
                for m in _events(f"gw-{d}", per)]
        w0 = server.writer_cpu_s
        t0, c0, f0 = time.perf_counter(), time.process_time(), time.thread_time()
        for topic, payload in msgs:
            server.feed(topic, payload)
        intake_cpu = time.thread_time() - f0
        ev_s = len(msgs) / (_wait_stored(server, "anomaly", len(msgs), 600) - t0)
        cpu = time.process_time() - c0
        ev_cpu = len(msgs) / cpu
        writer_cpu = server.writer_cpu_s - w0
        tx_events = server.transactions
        syncs = [(p.device_topic(f"gw-{d % devices}", p.Channel.SYNC), m) for d in range(devices)
                 for m in _sync_batches(f"gw-{d}", sync_batches // devices, sync_rows)]
        t0, c0 = time.perf_counter(), time.process_time()
        for topic, payload in syncs:
            server.feed(topic, payload)
        sync_s = len(syncs) / (_wait_stored(server, "sync", len(syncs), 600) - t0)
        sync_cpu = len(syncs) / (time.process_time() - c0)
        stored_events, stored_syncs = _count(home, db.AnomalyEvent), _count(home, db.SyncBatch)
        if stored_events != len(msgs) or stored_syncs != len(syncs):
            raise RuntimeError(f"stored {stored_events}/{len(msgs)} events, {stored_syncs}/{len(syncs)} batches")
        us = 1e6 / len(msgs)
        return {"anomaly_events": len(msgs), "events_per_s": round(ev_s), "events_per_cpu_s": round(ev_cpu),
                "intake_us_per_event": round(intake_cpu * us, 1), "writer_us_per_event": round(writer_cpu * us, 1),
                "other_us_per_event": round((cpu - intake_cpu - writer_cpu) * us, 1),
                "transactions": tx_events, "acks_sent": server.acks_sent, "sync_batches": len(syncs),
                "rows_per_batch": sync_rows, "sync_rows_per_s": round(sync_s * sync_rows),
                "sync_rows_per_cpu_s": round(sync_cpu * sync_rows), "batch_max": server.cfg.ingest.batch_max}
    finally:
        server.stop()


def _publisher(url: str, device: str, n: int, ready: Any, go: Any) -> None:
    payloads = _events(device, n)
    cfg = BrokerConfig(url=url)
    client = make_client(cfg, f"bench-pub-{device}", persistent=False)
    connect(client, cfg)
    topic = p.device_topic(device, p.Channel.ANOMALY)
    ready.release()
    go.wait()
    infos = [client.publish(topic, m, qos=1) for m in payloads]
    for info in infos:
        info.wait_for_publish(120)
    client.disconnect()
    client.loop_stop()


def ingest_through_broker(workdir: Path, broker: RunningBroker, events: int = 40_000,
                          publishers: int = 4) -> dict[str, Any]:
    home = _home(workdir / "ingest-hub-e2e", broker.url, "bench-hub-e2e")
    server = HubServer(home)
    server.start()
    tune_gc()  # as `serve` does
    ctx = mp.get_context("spawn")
    ready, go = ctx.Semaphore(0), ctx.Event()
    per = events // publishers
    procs = [ctx.Process(target=_publisher, args=(broker.url, f"pub-{i}", per, ready, go), daemon=True)
             for i in range(publishers)]
    try:
        for proc in procs:
            proc.start()
        for _ in procs:
            if not ready.acquire(timeout=120):
                raise RuntimeError("a publisher process did not start")
        t0, c0 = time.perf_counter(), time.process_time()
        go.set()
        rate = per * publishers / (_wait_stored(server, "anomaly", per * publishers, 600) - t0)
        cpu_rate = per * publishers / (time.process_time() - c0)
        for proc in procs:
            proc.join(60)
        stored = _count(home, db.AnomalyEvent)
        if stored != per * publishers:
            raise RuntimeError(f"stored {stored} of {per * publishers} events")
        return {"anomaly_events": stored, "publishers": publishers, "events_per_s": round(rate),
                "events_per_hub_cpu_s": round(cpu_rate), "transactions": server.transactions, "duplicates": server.stored["duplicate"]}
    finally:
        server.stop()
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
