"""``edge-agent`` command line."""

from __future__ import annotations

import argparse
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
    if args.command == "doctor":
        return _doctor(cfg, args)
    if args.command == "bench":
        return _bench(cfg, args)

    logging.basicConfig(level=cfg.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from edge_agent.agent import Agent
    from shared.mqtt import AGENT_MAX_DISCONNECTED_S, NetworkSupervisor

    agent = Agent(cfg)
    stop = agent.stop_event
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    agent.watchdog.install_test_hook()
    agent.start()
    agent.watchdog.notifier.notify("READY=1", f"STATUS=scoring as {cfg.device_id}, model v{agent.model_version}")
    supervisor = NetworkSupervisor()
    supervisor.watch(agent.client, "agent", cfg.broker.disconnect_limit(AGENT_MAX_DISCONNECTED_S))
    code = supervisor.run(stop, logging.getLogger("edge_agent"))
    agent.watchdog.notifier.notify("STOPPING=1")
    try:
        agent.stop()
    except Exception:  # the network may be what failed: exit with the reason already logged
        logging.getLogger("edge_agent").exception("error while stopping")
    return code


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
