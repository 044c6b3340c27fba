"""``edge-agent`` command line."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import signal
import sys
from pathlib import Path

from edge_agent.config import AgentConfig, load_config, reference
from shared.schema import SchemaError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edge-agent", description="edgesentry edge agent")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="connect to the hub's broker and score readings until stopped")
    run.add_argument("--config", type=Path, required=True, help="agent TOML file")
    check = sub.add_parser("check-config", help="validate a config file and print it resolved")
    check.add_argument("--config", type=Path, required=True)
    sub.add_parser("config-reference", help="print every configuration option")
    st = sub.add_parser("status", help="outbox depth, bytes, oldest age, drops by kind and the model state "
                        "(reads state_dir; works while the agent runs)")
    st.add_argument("--config", type=Path, required=True)
    st.add_argument("--json", action="store_true", help="machine-readable output")
    rp = sub.add_parser("replay", help="score a CSV with a signed bundle through the agent's streaming code")
    rp.add_argument("--bundle", type=Path, required=True, help="bundle directory or .tar.gz")
    rp.add_argument("--data", type=Path, required=True, help="CSV with a timestamp column and the model's features")
    rp.add_argument("--out", type=Path, required=True, help="CSV to write: readings, score, likelihood, decision")
    rp.add_argument("--trusted-key", action="append", default=[], help="hub public key (repeatable)")
    rp.add_argument("--config", type=Path, help="take trusted keys from this agent TOML")
    rp.add_argument("--timestamp-column", default="timestamp")
    doc = sub.add_parser("doctor", help="check runtime, config, keys, model, broker, clock and disk, and benchmark "
                                        "the model against the firmware profile; non-zero exit on any failure")
    doc.add_argument("--config", type=Path, required=True, help="agent TOML file")
    doc.add_argument("--bundle", type=Path, help="check and bench this bundle instead of the installed model")
    doc.add_argument("--broker-timeout", type=float, default=10.0, help="seconds to wait for the broker")
    bn = sub.add_parser("bench", help="benchmark the installed model (or --bundle) on this device")
    bn.add_argument("--config", type=Path, required=True, help="agent TOML file")
    bn.add_argument("--bundle", type=Path, help="bench this bundle instead of the installed model")
    bn.add_argument("--windows", type=int, default=300, help="windows to time one at a time")
    bn.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)

    if args.command == "config-reference":
        print(reference())
        return 0
    if args.command == "replay":
        return _replay(args)
    try:
        cfg = load_config(args.config)
    except SchemaError as exc:
        print(f"edge-agent: invalid config {args.config}: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(cfg)
        return 0
    if args.command == "status":
        return _status(cfg, args.json)
    if args.command == "doctor":
        return _doctor(cfg, args)
    if args.command == "bench":
        return _bench(cfg, args)

    logging.basicConfig(level=cfg.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from edge_agent.agent import GIL_SWITCH_INTERVAL_S, Agent

    # Hand-offs between the MQTT, scoring and sender threads wait for the GIL; CPython's default 5 ms
    # switch interval was most of the reading → report latency (docs/benchmarks.md).
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    from edge_agent.memory import keep_batch_memory

    keep_batch_memory()  # batch temporaries stay mapped: no page faults per batch (edge_agent/memory.py)
    # Signature checks (boot, new bundles, announcements) in a helper process: no crypto library in RSS.
    from shared.signing import verify_in_helper_process

    verify_in_helper_process()
    from shared.mqtt import AGENT_MAX_DISCONNECTED_S, NetworkSupervisor

    agent = Agent(cfg)
    stop = agent.stop_event
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    agent.watchdog.install_test_hook()
    agent.start()
    # Everything loaded so far (modules, model, clients) lives as long as the process: out of the cyclic
    # collector's sight, so a full collection scans only what came later (no tens-of-ms pause mid-stream).
    # The price: a start-up object later dropped inside a reference cycle (say the boot model's, after an
    # update) is never collected — bounded, once.
    gc.freeze()
    agent.watchdog.notifier.notify("READY=1", f"STATUS=scoring as {cfg.device_id}, model v{agent.model_version}")
    supervisor = NetworkSupervisor()
    supervisor.watch(agent.client, "agent", cfg.broker.disconnect_limit(AGENT_MAX_DISCONNECTED_S))
    for source in agent.readers:
        supervisor.watch(source.client, f"readings on {source.broker.url}",
                         source.broker.disconnect_limit(AGENT_MAX_DISCONNECTED_S))
    code = supervisor.run(stop, logging.getLogger("edge_agent"))
    agent.watchdog.notifier.notify("STOPPING=1")
    try:
        agent.stop()
    except Exception:  # the network may be what failed: exit with the reason already logged
        logging.getLogger("edge_agent").exception("error while stopping")
    return code


def _status(cfg: AgentConfig, as_json: bool) -> int:
    import json
    import time

    from edge_agent.outbox import DEFAULT_MAX_BYTES, FILENAME, read_stats

    path = cfg.state_dir / FILENAME
    if not path.exists():
        print(f"edge-agent status: no outbox at {path} (has the agent run with this config?)", file=sys.stderr)
        return 1
    stats, meta = read_stats(path)
    last: dict[str, object] = json.loads(meta["last_status"]) if "last_status" in meta else {}
    age = time.time() - stats.oldest_created if stats.oldest_created is not None else None
    budget = cfg.outbox.max_bytes or DEFAULT_MAX_BYTES
    out = {
        "device": cfg.device_id,
        "model_version": last.get("model_version"),
        "model_state": last.get("model_state", "none"),
        "model_error": last.get("error", ""),
        "outbox_depth": stats.depth,
        "outbox_bytes": stats.bytes,
        "outbox_max_bytes": budget,
        "outbox_oldest_age_s": age,
        "outbox_by_kind": stats.depth_by_kind,
        "outbox_dropped": stats.dropped,
    }
    if as_json:
        print(json.dumps(out, indent=2))
        return 0
    version = out["model_version"]
    print(f"device        {cfg.device_id}")
    print(f"model         {'v' + str(version) if version is not None else 'none'} ({out['model_state']})"
          + (f" error: {out['model_error']}" if out["model_error"] else ""))
    print(f"outbox        {stats.depth} report(s), {stats.bytes / 1024:.1f} KiB of "
          f"{budget / 2**20:.0f} MiB" + (f", oldest {age:.0f} s old" if age is not None else ""))
    print("  waiting     " + (", ".join(f"{k} {n}" for k, n in sorted(stats.depth_by_kind.items())) or "-"))
    print("  dropped     " + (", ".join(f"{k} {n}" for k, n in sorted(stats.dropped.items())) or "none"))
    return 0
def _doctor(cfg: AgentConfig, args: argparse.Namespace) -> int:
    from edge_agent.health import CheckStatus, Doctor

    checks = Doctor(cfg, args.bundle, args.broker_timeout).run(emit=lambda c: print(c.line(), flush=True))
    failed = [c for c in checks if c.status == CheckStatus.FAIL]
    print(f"doctor: {len(failed)} check(s) failed: {', '.join(c.name for c in failed)}" if failed
          else "doctor: all checks passed" + (" (with warnings)" if any(c.status == CheckStatus.WARN
                                                                       for c in checks) else ""))
    return 1 if failed else 0


def _bench(cfg: AgentConfig, args: argparse.Namespace) -> int:
    from edge_agent.config import agent_profile
    from edge_agent.health import bench, installed_bundle, load_bundle
    from shared.bundle import BundleError

    try:
        bundle = load_bundle(args.bundle, cfg.trusted_keys) if args.bundle else installed_bundle(cfg)[1]
        if bundle is None:
            print("edge-agent bench: no model installed yet; pass --bundle", file=sys.stderr)
            return 2
        result = bench(bundle, cfg.detector.runtime, cfg.detector.num_threads, agent_profile(cfg), args.windows)
    except (BundleError, OSError, ValueError, RuntimeError) as exc:
        print(f"edge-agent bench: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        lat = result.latency
        print(f"{result.model} v{result.model_version} on {result.runtime} x{result.num_threads}: p50 "
              f"{lat.p50_ms:.3f} / p99 {lat.p99_ms:.3f} / max {lat.max_ms:.3f} ms per window ({lat.calls} windows), "
              f"{result.windows_per_s:.0f} windows/s batched, RSS {result.rss_mb:.0f} MB, "
              f"model {result.model_bytes} bytes")
        for reason in result.over_budget:
            print(f"over budget: {reason}")
    return 1 if result.over_budget else 0


def _replay(args: argparse.Namespace) -> int:
    from edge_agent import replay
    from shared.bundle import BundleError

    keys = list(args.trusted_key)
    try:
        if args.config:
            keys += load_config(args.config).trusted_keys
        result = replay.run(args.bundle, args.data, args.out, keys, args.timestamp_column)
    except (SchemaError, BundleError, ValueError, OSError) as exc:
        print(f"edge-agent replay: {exc}", file=sys.stderr)
        return 2
    flagged = int(result.anomalous.sum())
    print(f"{len(result.score)} readings scored, {flagged} flagged; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
