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
    args = parser.parse_args(argv)

    if args.command == "config-reference":
        print(reference())
        return 0
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

    agent = Agent(cfg)
    stop = agent.stop_event
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    agent.start()
    stop.wait()
    agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
