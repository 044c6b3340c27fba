"""The generated fast path of ``shared.schema`` accepts exactly what the generic loader accepts and builds
the same objects; everything else it hands to the generic loader (same error, same message)."""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from shared import protocol as p
from shared import schema

V = p.PROTOCOL_VERSION
TEMPLATES: dict[p.Channel, dict[str, Any]] = {
    p.Channel.READINGS: {"v": V, "ts": [1.0, 2.0], "features": ["a"], "values": [[1.0], [None]]},
    p.Channel.ANOMALY: {"v": V, "event_id": "e", "device": "gw", "ts": 1.0, "detected_at": 1.0, "score": 2.0,
                        "threshold": 1.0, "model_version": 1, "top_features": ["a", "b"],
                        "attribution": {"a": 0.5, "b": 0.25}, "likelihood": 0.9},
    p.Channel.HEARTBEAT: {"v": V, "device": "gw", "ts": 1.0, "seq": 1, "uptime_s": 1.0, "model_version": None,
                          "readings_received": 0, "readings_scored": 0, "anomalies": 0, "rejected": 0,
                          "queue_depth": 0, "rejects": {"schema": 2}, "outbox_dropped": {"anomaly": 1}},
    p.Channel.STATUS: {"v": V, "device": "gw", "ts": 1.0, "state": "online", "model_state": "active",
                       "model_version": 1, "failed_version": None, "rollout_id": 1, "msg_id": "m"},
    p.Channel.TELEMETRY: {"v": V, "device": "gw", "ts": 1.0, "interval_s": 1.0, "scored": 1, "score_mean": 1.0,
                          "score_max": 1.0, "readings_scored_total": 1, "msg_id": "t"},
    p.Channel.SYNC: {"v": V, "device": "gw", "batch_id": "b", "features": ["a"], "rows": [[1.0, 2.0]], "flags": [0]},
    p.Channel.ACK: {"v": V, "device": "gw", "ids": ["a", "b"]},
}

# Values a JSON or TOML document can hold, with the edges the type checks care about.
EDGES: list[Any] = [None, True, False, 0, 1, -1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 0.0, 1.5, math.inf,
                    -math.inf, math.nan, "", "x", "a", "online", "active", "committed", "schema"]
CONTAINERS: list[Any] = [[], {}, ["a"], [1], [1.0], [None], [True], [math.inf], ["a", 1], [[1.0, 2.0]], [[1, None]],
                         [[1.0]], [[None, 1.0]], {"a": 1}, {"a": 1.0}, {"a": True}, {"a": None}, {"a": math.nan},
                         {"a": "x"}, {"a": 2**63}, ("a",), [{"ts": 1.0, "values": {"a": 1.0}}]]
edge_scalars = st.sampled_from(EDGES)
values = st.recursive(
    edge_scalars | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4) | st.just("a"), inner, max_size=3),
    max_leaves=6,
)


def same(a: Any, b: Any) -> bool:
    """Equal values of the same types all the way down (``1 == 1.0`` and ``nan != nan`` would mislead)."""
    if type(a) is not type(b):
        return False
    if dataclasses.is_dataclass(a):
        return all(same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, enum.Enum):
        return a is b
    return bool(a == b)


def outcome(convert: Any, data: Any) -> tuple[str, Any]:
    try:
        return "ok", convert(data, "")
    except schema.SchemaError as exc:
        return "error", str(exc)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[p.Channel, dict[str, Any]]:
    channel = draw(st.sampled_from(sorted(TEMPLATES)))
    data = dict(TEMPLATES[channel])
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from([*sorted(data), "extra"]))
        if draw(st.integers(0, 3)) == 0:
            data.pop(key, None)
        else:
            data[key] = draw(values)
    return channel, data


def check(channel: p.Channel, data: dict[str, Any], strict: bool) -> str:
    fast = schema._converter(p.SCHEMAS[channel], strict)
    slow = fast.slow  # type: ignore[attr-defined]
    got, want = outcome(fast, data), outcome(slow, data)
    assert got[0] == want[0], (data, got, want)
    assert same(got[1], want[1]) if got[0] == "ok" else got[1] == want[1], (data, got, want)
    return got[0]


def test_every_single_field_change_gets_the_generic_answer() -> None:
    """Every field of every message replaced by each edge value (or removed), strict and lenient."""
    outcomes = []
    for channel, template in TEMPLATES.items():
        for key in [*template, "extra"]:
            for value in [*EDGES, *CONTAINERS, KeyError]:
                data = dict(template)
                if value is KeyError:
                    data.pop(key, None)
                else:
                    data[key] = value
                outcomes += [check(channel, data, strict) for strict in (False, True)]
    assert outcomes.count("ok") > 200 and outcomes.count("error") > 1000  # both answers were exercised


@settings(max_examples=300, deadline=None, database=None)
@given(mutated(), st.booleans())
def test_fast_path_matches_the_generic_loader(case: tuple[p.Channel, dict[str, Any]], strict: bool) -> None:
    check(*case, strict)


def test_templates_take_the_fast_path_and_copy_their_containers() -> None:
    for channel, data in TEMPLATES.items():
        fast = schema._converter(p.SCHEMAS[channel], False)
        assert fast.__qualname__.startswith("fast_load_"), channel
        msg = fast(data, "")
        for name, value in data.items():
            if isinstance(value, list | dict):  # the message must not share mutable state with its input
                assert getattr(msg, name) is not value, (channel, name)
