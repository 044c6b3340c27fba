"""Protocol: every malformed message becomes a counted rejection with a reason, never an exception."""

from __future__ import annotations

import json

import pytest

from shared import protocol as p


def _event(**over: object) -> dict[str, object]:
    msg = {"v": p.PROTOCOL_VERSION, "event_id": "e1", "device": "gw-1", "ts": 1.0, "detected_at": 1.1, "score": 5.0,
           "threshold": 3.0, "model_version": 1}
    msg.update(over)
    return msg


def test_valid_message_round_trips() -> None:
    msg = p.decode(p.Channel.ANOMALY, json.dumps(_event()).encode(), device="gw-1")
    assert isinstance(msg, p.AnomalyEvent) and msg.score == 5.0
    assert p.decode(p.Channel.ANOMALY, p.encode(msg)) == msg


def test_unknown_optional_keys_are_ignored_for_forward_compatibility() -> None:
    msg = p.decode(p.Channel.ANOMALY, json.dumps(_event(new_field=1)).encode())
    assert msg.event_id == "e1"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe", p.RejectReason.NOT_JSON),
        (b"{not json", p.RejectReason.NOT_JSON),
        (b"[1, 2]", p.RejectReason.NOT_OBJECT),
        (json.dumps(_event(v=1)).encode(), p.RejectReason.BAD_VERSION),
        (json.dumps({k: v for k, v in _event().items() if k != "score"}).encode(), p.RejectReason.SCHEMA),
        (json.dumps(_event(score="high")).encode(), p.RejectReason.SCHEMA),
        (json.dumps(_event(model_version=True)).encode(), p.RejectReason.SCHEMA),
        (json.dumps(_event(event_id="")).encode(), p.RejectReason.SCHEMA),
        (b'{"v": 1, "event_id": "e", "device": "gw-1", "ts": NaN}', p.RejectReason.NOT_JSON),
        (json.dumps(_event(device="gw-2")).encode(), p.RejectReason.DEVICE_MISMATCH),
        (b"{" + b" " * (p.MAX_MESSAGE_BYTES + 1) + b"}", p.RejectReason.TOO_LARGE),
    ],
)
def test_malformed_messages_are_rejected_with_a_reason(payload: bytes, reason: p.RejectReason) -> None:
    with pytest.raises(p.ProtocolError) as err:
        p.decode(p.Channel.ANOMALY, payload, device="gw-1")
    assert err.value.reason == reason


def test_sync_rows_must_match_features() -> None:
    bad = {"v": p.PROTOCOL_VERSION, "device": "gw-1", "batch_id": "b", "features": ["a", "b"], "rows": [[1.0, 2.0]]}
    with pytest.raises(p.ProtocolError) as err:
        p.decode(p.Channel.SYNC, json.dumps(bad).encode())
    assert err.value.reason == p.RejectReason.SCHEMA
    ok = {**bad, "rows": [[1.0, 2.0, None]], "flags": [0]}
    assert p.decode(p.Channel.SYNC, json.dumps(ok).encode()).rows == [[1.0, 2.0, None]]


def test_topics() -> None:
    assert p.device_topic("gw-1", p.Channel.MODEL_CHUNK) == "edgesentry/gw-1/model/chunk"
    assert p.parse_topic("edgesentry/gw-1/model/request") == ("gw-1", p.Channel.MODEL_REQUEST)
    assert p.parse_topic(p.fleet_model_topic()) == ("fleet", p.Channel.MODEL)
    for bad in ["other/gw-1/anomaly", "edgesentry/gw-1/nope", "edgesentry/bad id/anomaly", "edgesentry"]:
        with pytest.raises(p.ProtocolError):
            p.parse_topic(bad)
    with pytest.raises(ValueError):
        p.device_topic("fleet", p.Channel.ANOMALY)


def test_reject_counter_counts_by_reason() -> None:
    counter = p.RejectCounter()
    for payload in (b"x", b"[]", b"y"):
        try:
            p.decode(p.Channel.HEARTBEAT, payload)
        except p.ProtocolError as exc:
            counter.reject("t", exc)
    assert counter.counts() == {"not_json": 2, "not_object": 1} and counter.total == 3


def test_encode_refuses_oversized_and_non_finite() -> None:
    big = p.SyncBatch(v=p.PROTOCOL_VERSION, device="d", batch_id="b", features=["a"], rows=[[1.0, 1.0]] * p.MAX_SYNC_ROWS)
    p.encode(big)  # the largest legal batch of one feature fits
    with pytest.raises(ValueError):
        p.encode(p.Telemetry(v=p.PROTOCOL_VERSION, device="d", ts=1.0, interval_s=1.0, scored=1, score_mean=float("nan"),
                             score_max=1.0, readings_scored_total=1))
