"""Staged model rollouts: the one owner of rollout state.

``states`` (per-device and per-rollout state machines, one transition table each), ``waves`` (selectors,
phases, gates), ``announce`` (signed announcements, chunks), ``engine`` (what `serve` runs: waves, gates,
timeouts, operator commands, devices coming online), ``api`` (start a rollout, commands, the model a
device should run, read queries), ``watch`` (block until agents run a version).
"""

from cloud_hub.rollout.announce import announce, chunks, send_bundle
from cloud_hub.rollout.api import RolloutError, current_model_for, request, start_rollout, views
from cloud_hub.rollout.engine import RolloutEngine
from cloud_hub.rollout.watch import RolloutInfo, start, wait_for_activation
from cloud_hub.rollout.waves import GateAction, Gates, Selector, parse_duration, parse_fraction, parse_phases

__all__ = [
    "GateAction",
    "Gates",
    "RolloutEngine",
    "RolloutError",
    "RolloutInfo",
    "Selector",
    "announce",
    "chunks",
    "current_model_for",
    "parse_duration",
    "parse_fraction",
    "parse_phases",
    "request",
    "send_bundle",
    "start",
    "start_rollout",
    "views",
    "wait_for_activation",
]
