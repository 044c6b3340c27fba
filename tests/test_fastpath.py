"""The columnar fast path: wire forms, the numpy ring buffer, batch scoring identical to per-reading
scoring, and the timestamp rule (issue 12)."""

from __future__ import annotations

import io
import pickle
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from cloud_hub.brokers import RunningBroker
from cloud_hub.demo.simulator import FEATURES
from edge_agent.detector import BUFFER_READINGS, ActiveModel, EpisodeTracker, StreamingDetector
from shared import bundle as bundle_fmt
from shared.mqtt import BrokerConfig, connect, make_client
from shared.preprocessing import series_windows
from shared.protocol import (
    PROTOCOL_VERSION,
    Channel,
    ProtocolError,
    RejectReason,
    decode,
    device_topic,
    npy_topic,
)
from shared.readings import (
    MAX_NPY_BYTES,
    ReadingsBlock,
    decode_readings,
    decode_readings_npy,
    encode_readings_columnar,
    encode_readings_npy,
)
from shared.signing import parse_public_key
from tests.conftest import simulated_series, start_agent


def _model(trained_home) -> ActiveModel:  # type: ignore[no-untyped-def]
    home, exported = trained_home
    return ActiveModel.from_bundle(bundle_fmt.load_dir(exported.bundle_dir, [parse_public_key(home.public_key())]))


def _rows(ts: np.ndarray, values: np.ndarray, features: list[str]) -> list[tuple[float, dict[str, float | None]]]:
    return [(float(t), {f: (None if np.isnan(v) else float(v)) for f, v in zip(features, row, strict=True)})
            for t, row in zip(ts, values, strict=True)]


def test_columnar_npy_and_per_reading_paths_score_identically(trained_home) -> None:  # type: ignore[no-untyped-def]
    """One reading at a time (dicts), columnar JSON blocks and .npy blocks give the same windows as the
    hub's training path and bit-identical scores and likelihoods."""
    model = _model(trained_home)
    features = model.preprocessing.features
    ts, values = simulated_series(30, seed=7)
    values[40:44, 1] = np.nan
    values[100, :] = np.nan
    values[300:303, 0] += 40.0  # an anomaly, so decisions are exercised too

    def run(blocks: list[ReadingsBlock]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        det = StreamingDetector(max_batch=16)
        det.swap(_model(trained_home))  # a fresh likelihood state per path
        parts = [p.scored for b in blocks if (p := det.push_block(b)).scored is not None]
        return (np.concatenate([p.scores for p in parts]), np.concatenate([p.likelihood for p in parts]),
                np.concatenate([p.anomalous for p in parts]), np.concatenate([p.windows for p in parts]))

    single = run([ReadingsBlock.from_rows(r) for r in (_rows(ts[i : i + 1], values[i : i + 1], features)
                                                         for i in range(len(ts)))])
    sizes = [1, 7, 250, 64, 3]
    cuts = np.cumsum([0, *sizes])
    json_blocks = [decode_readings(encode_readings_columnar(ts[a:b], features, values[a:b]))
                   for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    json_blocks.append(decode_readings(encode_readings_columnar(ts[cuts[-1] :], features, values[cuts[-1] :])))
    npy_blocks = [decode_readings_npy(encode_readings_npy(ts[a : a + 100], values[a : a + 100]), features)
                  for a in range(0, len(ts), 100)]
    columnar, npy = run(json_blocks), run(npy_blocks)
    hub = series_windows(values, model.preprocessing)
    assert np.array_equal(single[3], hub)
    for got in (columnar, npy):
        for a, b in zip(single, got, strict=True):
            assert np.array_equal(a, b)
    assert single[2].any() and not single[2].all()


def test_blocks_with_other_feature_orders_and_extra_columns_land_in_model_order(trained_home) -> None:  # type: ignore[no-untyped-def]
    model = _model(trained_home)
    features = model.preprocessing.features
    ts, values = simulated_series(5, seed=3)
    a, b = StreamingDetector(), StreamingDetector()
    a.swap(model)
    b.swap(_model(trained_home))
    ref = a.push_block(ReadingsBlock(ts, tuple(features), values)).scored
    shuffled = [*reversed(features), "extra"]
    table = np.column_stack([values[:, ::-1], np.arange(len(ts))])
    got = b.push_block(ReadingsBlock(ts, tuple(shuffled), table)).scored
    assert ref is not None and got is not None and np.array_equal(ref.scores, got.scores)
    assert "extra" in b.features


def test_ring_buffer_keeps_the_newest_readings_across_wraps() -> None:
    det = StreamingDetector()
    ts = np.arange(5 * BUFFER_READINGS, dtype=np.float64) + 1.0
    vals = np.column_stack([ts * 2, ts * 3])
    for s in range(0, len(ts), 1500):
        det.push_block(ReadingsBlock(ts[s : s + 1500], ("a", "b"), vals[s : s + 1500]))
    recent = det.recent_readings(BUFFER_READINGS)
    assert np.array_equal(recent.ts, ts[-BUFFER_READINGS:])
    assert np.array_equal(recent.values, vals[-BUFFER_READINGS:])
    with pytest.raises(ValueError, match="at most"):
        det.push_block(ReadingsBlock(ts[:BUFFER_READINGS], ("a", "b"), vals[:BUFFER_READINGS]))


def test_recent_windows_and_evaluate_for_a_staged_model(trained_home) -> None:  # type: ignore[no-untyped-def]
    model = _model(trained_home)
    ts, values = simulated_series(10, seed=2)
    det = StreamingDetector()
    det.push_block(ReadingsBlock(ts, tuple(model.preprocessing.features), values))  # no model active yet
    w = model.preprocessing.window
    windows = det.recent_windows(model, 20)
    assert np.array_equal(windows, series_windows(values, model.preprocessing)[-20:])
    scored = det.evaluate(model, 20)
    assert scored is not None and len(scored) == 20 and np.isfinite(scored.scores).all()
    assert np.array_equal(scored.ts, ts[-20:]) and windows.shape[1] == w


def test_timestamp_rule_rejects_stale_duplicate_and_future_readings() -> None:
    det = StreamingDetector(max_future_s=60.0)
    now = time.time()
    first = det.push_block(ReadingsBlock(np.array([now - 10, now - 9]), ("a",), np.array([[1.0], [2.0]])))
    assert first.admitted == 2 and first.rejected == {}
    ts = np.array([now - 9, now - 20, now - 8, now + 3600, now - 8.5, now - 7])  # dup, older, ok, future, older, ok
    got = det.push_block(ReadingsBlock(ts, ("a",), np.arange(6.0)[:, None]))
    assert got.admitted == 2
    assert got.rejected == {RejectReason.STALE_TIMESTAMP: 3, RejectReason.FUTURE_TIMESTAMP: 1}
    assert np.array_equal(det.recent_readings(10).ts, [now - 10, now - 9, now - 8, now - 7])
    assert np.array_equal(det.recent_readings(10).values[:, 0], [1.0, 2.0, 2.0, 5.0])
    # A far-future reading does not raise the bar for the next ones.
    assert det.push_block(ReadingsBlock(np.array([now - 6]), ("a",), np.array([[9.0]]))).admitted == 1
    assert det.rejected == {RejectReason.STALE_TIMESTAMP: 3, RejectReason.FUTURE_TIMESTAMP: 1}
    assert StreamingDetector(max_future_s=None).push_block(
        ReadingsBlock(np.array([now + 1e6]), ("a",), np.array([[1.0]]))).admitted == 1


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


@pytest.mark.parametrize(("payload", "match"), [
    (_npy(np.zeros((3, 3), dtype=np.float32)), "expected float64"),
    (_npy(np.zeros((3, 4))), r"expected float64 \(1-10000, 3\)"),
    (_npy(np.zeros(3)), "expected float64"),
    (_npy(np.zeros((0, 3))), "expected float64"),
    (_npy(np.array([[1.0, 2.0, None]], dtype=object)), "expected float64"),
    (_npy(np.array([[np.nan, 1.0, 2.0]])), "timestamps must be finite"),
    (_npy(np.array([[1.0, np.inf, 2.0]])), "finite or NaN"),
    (_npy(np.zeros((20, 3)))[:-8], "npy"),
    (b"\x93NUMPY garbage", "not a .npy"),
    (pickle.dumps([1, 2, 3]), "not a .npy"),
])
def test_bad_npy_readings_are_refused_with_a_reason(payload: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match) as err:
        decode_readings_npy(payload, ["a", "b"])
    assert err.value.reason == RejectReason.SCHEMA


def test_npy_limits_and_no_model() -> None:
    with pytest.raises(ProtocolError) as err:
        decode_readings_npy(b"x" * (MAX_NPY_BYTES + 1), ["a"])
    assert err.value.reason == RejectReason.TOO_LARGE
    with pytest.raises(ProtocolError) as err:
        decode_readings_npy(encode_readings_npy(np.ones(2), np.ones((2, 1))), None)
    assert err.value.reason == RejectReason.NO_MODEL
    block = decode_readings_npy(encode_readings_npy(np.array([1.0, 2.0]), np.array([[np.nan], [3.0]])), ["a"])
    assert np.isnan(block.values[0, 0]) and block.values[1, 0] == 3.0  # NaN = missing


def _v(body: str) -> bytes:
    return body.replace("VV", str(PROTOCOL_VERSION)).encode()


@pytest.mark.parametrize(("body", "match"), [
    ('{"v":VV,"ts":[1,2],"features":["a"],"values":[[1]]}', "one row per ts"),
    ('{"v":VV,"ts":[1],"features":["a","a"],"values":[[1,2]]}', "unique"),
    ('{"v":VV,"ts":[1],"features":["a"],"values":[["1"]]}', "numbers or null"),
    ('{"v":VV,"ts":[1],"features":["a"],"values":[[true]]}', "numbers or null"),
    ('{"v":VV,"ts":["x"],"features":["a"],"values":[[1]]}', "ts must be numbers"),
    ('{"v":VV,"ts":[1],"features":"a","values":[[1]]}', "need lists"),
    ('{"v":VV,"ts":[],"features":["a"],"values":[]}', "need 1-10000"),
    ('{"v":VV,"ts":[1],"features":["a"],"values":[[NaN]]}', None),
])
def test_bad_columnar_json_is_refused(body: str, match: str | None) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode_readings(_v(body))


def test_json_null_is_missing_and_both_json_shapes_decode() -> None:
    block = decode_readings(_v('{"v":VV,"ts":[1.5,2],"features":["a","b"],"values":[[1,null],[2,3]]}'))
    assert block.features == ("a", "b") and np.isnan(block.values[0, 1]) and block.ts.tolist() == [1.5, 2.0]
    per = decode_readings(_v('{"v":VV,"readings":[{"ts":1,"values":{"a":1,"b":null}},{"ts":2,"values":{"b":4}}]}'))
    assert per.features == ("a", "b") and np.isnan(per.values[1, 0]) and per.values[1, 1] == 4.0
    with pytest.raises(ProtocolError):
        decode(Channel.READINGS, _v('{"v":VV,"readings":[{"ts":1,"values":{"a":1}}],"ts":[1],"features":["a"],'
                                    '"values":[[1]]}'))


def test_episode_tracker_batch_equals_one_at_a_time() -> None:
    rng = np.random.default_rng(0)
    for rearm in (0, 3, 10):
        verdicts = rng.random(2000) < 0.1
        a, b = EpisodeTracker(rearm), EpisodeTracker(rearm)
        one = [i for i, v in enumerate(verdicts) if a.update(bool(v))]
        batched: list[int] = []
        for s in range(0, len(verdicts), 37):
            batched += [s + i for i in b.starts(verdicts[s : s + 37])]
        assert one == batched and one


@pytest.mark.integration
def test_agent_takes_npy_and_columnar_readings_and_counts_rejected_timestamps(
        tmp_path: Path, mosquitto: RunningBroker, trained_home) -> None:  # type: ignore[no-untyped-def]
    """Through a real broker: .npy and columnar JSON readings are scored; stale and future readings are
    rejected, counted by reason in the heartbeat, and never scored."""
    import threading

    from edge_agent.model_store import ModelStore
    from edge_agent.update import provision

    home, exported = trained_home
    store = ModelStore(tmp_path / "state", [parse_public_key(home.public_key())])
    store.install(bundle_fmt.pack(bundle_fmt.read_dir(exported.bundle_dir)))
    provision(tmp_path / "state", 1)
    device = "gw-fast"
    agent, log = start_agent(tmp_path, device, home.public_key(), mosquitto.url,
                             "heartbeat_s = 0.2\n[sync]\nenabled = false")
    cfg = BrokerConfig(url=mosquitto.url)
    beats: list = []
    cond = threading.Condition()

    def on_message(_c, _u, msg) -> None:  # type: ignore[no-untyped-def]
        with cond:
            beats.append(decode(Channel.HEARTBEAT, msg.payload))
            cond.notify_all()

    watch = make_client(cfg, "watch-fast", persistent=False)
    watch.on_connect = lambda c, *_: c.subscribe(device_topic(device, Channel.HEARTBEAT), qos=0)
    watch.on_message = on_message
    connect(watch, cfg)
    pub = make_client(cfg, "pub-fast", persistent=False)
    connect(pub, cfg)
    try:
        with cond:
            assert cond.wait_for(lambda: beats, 30), log.read_text()
        ts, values = simulated_series(20, seed=4, t0=time.time() - 3600)
        topic = device_topic(device, Channel.READINGS)
        pub.publish(npy_topic(topic), encode_readings_npy(ts[:200], values[:200]), qos=1).wait_for_publish(5)
        pub.publish(topic, encode_readings_columnar(ts[200:], FEATURES, values[200:]), qos=1).wait_for_publish(5)
        bad_ts = np.array([ts[10], ts[-1], time.time() + 10 * 3600])  # old, duplicate, far future
        pub.publish(npy_topic(topic), encode_readings_npy(bad_ts, values[:3]), qos=1).wait_for_publish(5)
        pub.publish(npy_topic(topic), zlib.compress(b"not npy"), qos=1).wait_for_publish(5)
        window = 16
        with cond:
            ok = cond.wait_for(lambda: beats[-1].readings_received == len(ts)
                               and beats[-1].readings_scored == len(ts) - window + 1
                               and beats[-1].rejects.get("stale_timestamp") == 2
                               and beats[-1].rejects.get("future_timestamp") == 1
                               and beats[-1].rejects.get("schema") == 1, 30)
            assert ok, (beats[-1], log.read_text()[-3000:])
            assert beats[-1].rejected == 4
    finally:
        agent.terminate()
        assert agent.wait(30) == 0
        for c in (pub, watch):
            c.disconnect()
            c.loop_stop()


def test_per_reading_json_with_too_many_distinct_features_is_refused_before_allocating() -> None:
    readings = ",".join(f'{{"ts":{i},"values":{{"f{i}":1}}}}' for i in range(1, 2000))
    with pytest.raises(ProtocolError, match="distinct features"):
        decode_readings(_v('{"v":VV,"readings":[' + readings + "]}"))


def test_npy_decoder_turns_any_bytes_into_a_block_or_a_protocol_error() -> None:
    """Random bytes and every truncation/bit flip of valid .npy payloads: a block or ProtocolError."""
    rng = np.random.default_rng(5)
    valid = encode_readings_npy(np.arange(4.0), rng.normal(size=(4, 2)))
    cases = [rng.bytes(int(n)) for n in rng.integers(0, 400, 300)]
    cases += [valid[:k] for k in range(len(valid))]
    for _ in range(500):
        b = bytearray(valid)
        i = int(rng.integers(len(b)))
        b[i] ^= 1 << int(rng.integers(8))
        cases.append(bytes(b))
    blocks = 0
    for payload in cases:
        try:
            block = decode_readings_npy(payload, ["a", "b"])
        except ProtocolError:
            continue
        blocks += 1
        assert block.values.shape == (len(block), 2) and np.isfinite(block.ts).all()
    assert blocks > 0


def test_predict_batched_equals_predict_per_chunk_with_padding_buckets(trained_home) -> None:  # type: ignore[no-untyped-def]
    """Quantising once for all interpreter calls and padding short calls to a bucket changes no number."""
    model = _model(trained_home)
    ts, values = simulated_series(5, seed=11)
    x = series_windows(values, model.preprocessing)[:37]
    tfl = model.model
    want = [tfl.predict(x[s : s + 16]) for s in range(0, len(x), 16)]
    got = tfl.predict_batched(x, 16, (1, 4, 16))
    assert set(got) == set(want[0])
    for head, v in got.items():
        assert v.shape[0] == len(x) and v.dtype == np.float32
        assert np.array_equal(v, np.concatenate([w[head] for w in want]))


def test_a_few_windows_at_batch_one_equal_single_predictions(trained_home) -> None:  # type: ignore[no-untyped-def]
    """Two or three windows arriving together run one call each at batch 1 (no re-allocation for bucket 4):
    the same numbers as predicting each alone, and a larger call afterwards still pads to its bucket."""
    model = _model(trained_home)
    ts, values = simulated_series(5, seed=12)
    x = series_windows(values, model.preprocessing)[:24]
    tfl = model.model
    alone = [tfl.predict(x[i : i + 1]) for i in range(len(x))]
    for start, m in ((0, 1), (1, 2), (3, 3), (6, 5), (11, 1), (12, 3)):
        got = tfl.predict_batched(x[start : start + m], 16, (1, 4, 16))
        for head, v in got.items():
            assert np.array_equal(v, np.concatenate([alone[i][head] for i in range(start, start + m)]))


def test_window_errors_equal_the_numpy_definition_bit_for_bit() -> None:
    """The reconstruction error is summed time-major (whole rows at a time) for speed: the same operations in
    the same order as ((rec - x) ** 2).mean(axis=1), so the same bits, for one window or many."""
    from shared.scoring import window_errors

    rng = np.random.default_rng(12)
    for b, w, f in ((1, 32, 4), (7, 32, 4), (300, 32, 4), (5, 9, 1)):
        x = rng.normal(0.5, 0.3, size=(b, w, f)).astype(np.float32)
        rec = (x + rng.normal(0, 0.05, size=x.shape)).astype(np.float32)
        pred = rec[:, -1, :] + np.float32(0.01)
        got = window_errors(x, rec, pred)
        want = ((np.asarray(rec, np.float64) - x) ** 2).mean(axis=1)
        assert np.array_equal(got.per_feature_rec, want) and np.array_equal(got.reconstruction, want.mean(axis=1))
        assert np.array_equal(got.per_feature_pred, (np.asarray(pred, np.float64) - x[:, -1, :]) ** 2)
