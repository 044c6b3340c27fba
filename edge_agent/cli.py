"""``edge-agent`` command line."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from edge_agent.config import load_config, reference
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

    logging.basicConfig(level=cfg.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from edge_agent.agent import Agent
    from shared.mqtt import AGENT_MAX_DISCONNECTED_S, NetworkSupervisor

    agent = Agent(cfg)
    stop = agent.stop_event
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    agent.start()
    supervisor = NetworkSupervisor()
    supervisor.watch(agent.client, "agent", cfg.broker.disconnect_limit(AGENT_MAX_DISCONNECTED_S))
    code = supervisor.run(stop, logging.getLogger("edge_agent"))
    try:
        agent.stop()
    except Exception:  # the network may be what failed: exit with the reason already logged
        logging.getLogger("edge_agent").exception("error while stopping")
    return code


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
