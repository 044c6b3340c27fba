"""The sync policy (edge_agent/sync.py): what is chosen, in which order, within which bandwidth, and
that the hub decodes what is sent (both forms, through the one decoder)."""

from __future__ import annotations

import base64
import io
import json
import zlib

import numpy as np
import pytest

from edge_agent.config import SyncConfig, SyncPolicy
from edge_agent.detector import PushResult, ScoredBatch
from edge_agent.sync import SyncSelector
from shared.protocol import (
    MAX_SYNC_ROWS,
    PROTOCOL_VERSION,
    Channel,
    ProtocolError,
    SyncBatch,
    decode,
    encode,
    pack_rows,
)
from shared.readings import ReadingsBlock
from shared.schema import SchemaError, load

W = 8  # window length of the fake model
FEATURES = ("a", "b")


def _pushes(scores: np.ndarray, threshold: float = 1.0, block: int = 100) -> list[PushResult]:
    """What a detector with a window of W would return for a stream whose window scores are ``scores``
    (reading i's values are (i, -i): rows can be traced back)."""
    n = len(scores) + W - 1
    ts = 1000.0 + np.arange(n)
    values = np.column_stack([np.arange(n, dtype=float), -np.arange(n, dtype=float)])
    out = [PushResult(W - 1, {}, ReadingsBlock(ts[: W - 1], FEATURES, values[: W - 1]), None, W)]
    for s in range(0, len(scores), block):
        e = min(s + block, len(scores))
        k = e - s
        rows = ReadingsBlock(ts[s : e + W - 1], FEATURES, values[s : e + W - 1])  # context + new rows
        sc = scores[s:e]
        scored = ScoredBatch(ts=ts[s + W - 1 : e + W - 1], scores=sc, threshold=threshold,
                             reconstruction_error=sc, prediction_error=sc, contributions=np.zeros((k, 2)),
                             likelihood=np.zeros(k), likelihood_threshold=None, anomalous=sc > threshold,
                             model_version=1, windows=np.zeros((k, W, 2), np.float32))
        out.append(PushResult(k, {}, rows, scored, W))
    return out


def _decoded(batches: list[SyncBatch]) -> tuple[np.ndarray, np.ndarray]:
    """Through the wire and the hub's one decoder: (rows, flags)."""
    tables, flags = [], []
    for b in batches:
        m = decode(Channel.SYNC, encode(b), device="gw")
        assert len(m.table()) <= MAX_SYNC_ROWS
        tables.append(m.table())
        flags.append(np.asarray(m.flags))
    return np.concatenate(tables), np.concatenate(flags)


@pytest.mark.parametrize("compress", [True, False])
def test_full_policy_sends_every_reading_once_in_chunks(compress: bool) -> None:
    scores = np.full(4500, 0.1)
    scores[[100, 3000]] = 5.0
    sel = SyncSelector(SyncConfig(policy=SyncPolicy.FULL, compress=compress))
    for p in _pushes(scores, block=700):
        sel.offer(p)
    batches = sel.take("gw", 1)
    assert len(batches) == 3 and len({b.batch_id for b in batches}) == 3
    assert all(bool(b.packed) == compress and bool(b.rows) != compress for b in batches)
    table, flags = _decoded(batches)
    n = len(scores) + W - 1
    assert np.array_equal(table[:, 0], 1000.0 + np.arange(n)) and np.array_equal(table[:, 1], np.arange(n))
    assert np.flatnonzero(flags).tolist() == [100 + W - 1, 3000 + W - 1]
    assert sel.take("gw", 1) == [] and sel.pending_rows == 0


def test_smart_policy_sends_flagged_and_hard_windows_and_a_sample() -> None:
    rng = np.random.default_rng(1)
    scores = rng.uniform(0.0, 0.5, 5000)
    flagged = [500, 501, 502, 3000]
    hard = [1500, 4000]  # within 20 % of the threshold, below it
    scores[flagged] = 3.0
    scores[hard] = [0.85, 1.0]
    sel = SyncSelector(SyncConfig(policy=SyncPolicy.SMART, sample_windows=5, hard_margin=0.2), seed=3)
    for p in _pushes(scores, block=64):
        sel.offer(p)
    table, flags = _decoded(sel.take("gw", 1))
    rows = table[:, 1].astype(int)  # the reading index
    assert len(np.unique(rows)) == len(rows) and np.all(np.diff(table[:, 0]) != 0)
    for end in [*flagged, *hard]:
        want = set(range(end, end + W))  # window ending at score index `end` = readings end..end+W-1
        assert want <= set(rows.tolist()), end
    chosen = set(range(500, 503 + W - 1)) | set(range(3000, 3000 + W)) | set(range(1500, 1500 + W)) \
        | set(range(4000, 4000 + W))
    extra = set(rows.tolist()) - chosen
    assert 0 < len(extra) <= 5 * W  # the reservoir: at most sample_windows windows of normal data
    assert len(rows) < len(scores) / 20  # far less than full
    assert flags.sum() == len(flagged)
    # Flagged first: the first rows sent are the flagged windows.
    assert rows[0] == 500


def test_smart_policy_uploads_each_reading_once_where_samples_overlap_flagged_windows() -> None:
    """Sampled normal windows overlap flagged windows and each other; every reading still goes once,
    and every flagged window is whole."""
    scores = np.full(1200, 0.1)
    flagged = list(range(100, 1200, 90))
    scores[flagged] = 5.0
    sel = SyncSelector(SyncConfig(policy=SyncPolicy.SMART, sample_windows=200, hard_margin=0.0), seed=0)
    pushes = _pushes(scores, block=40)
    batches = []
    for i, p in enumerate(pushes):
        sel.offer(p)
        if i % 3 == 0:  # the agent's commits between interval ends
            batches += sel.take("gw", 1, reservoir=False)
        if i % 10 == 0:
            batches += sel.take("gw", 1)
    batches += sel.take("gw", 1)
    table, flags = _decoded(batches)
    rows = table[:, 1].astype(int)
    assert len(np.unique(rows)) == len(rows)
    for end in flagged:
        assert set(range(end, end + W)) <= set(rows.tolist()), end
    assert len(rows) > len(flagged) * W  # samples beyond the flagged windows


def test_reservoir_is_uniform_over_the_interval() -> None:
    """Each normal window is equally likely to be sampled: the mean sampled position is the middle."""
    scores = np.full(2000, 0.1)
    picks = []
    for seed in range(40):
        sel = SyncSelector(SyncConfig(policy=SyncPolicy.SMART, sample_windows=4), seed=seed)
        for p in _pushes(scores, block=50):
            sel.offer(p)
        table, _ = _decoded(sel.take("gw", None))
        rows = table[:, 1]
        assert W <= len(rows) <= 4 * W  # four windows (overlapping ones share rows)
        picks += rows.tolist()
    assert abs(np.mean(picks) - (1000 + W / 2)) < 150


def test_commits_take_chosen_rows_flagged_first_and_keep_the_reservoir_for_the_interval() -> None:
    """The agent's reading commits (``reservoir=False``) move every chosen row to the outbox at once; the
    reservoir sample waits for the end of the interval.  (The bandwidth cap is the outbox sender's:
    tests/test_outbox.py::test_sender_spends_the_sync_bandwidth_cap_on_sync_batches_only.)"""
    cfg = SyncConfig(policy=SyncPolicy.SMART, interval_s=1.0, sample_windows=5, hard_margin=0.2)
    sel = SyncSelector(cfg, seed=0)
    scores = np.random.default_rng(2).uniform(0, 0.5, 3000)
    scores[200:205] = 5.0
    scores[1000] = 0.9  # hard
    pushes = _pushes(scores, block=100)
    for p in pushes[:20]:
        sel.offer(p)
    committed = sel.take("gw", 1, reservoir=False)
    table, flags = _decoded(committed)
    assert flags.sum() == 5 and flags[: W + 4].sum() == 5  # the flagged windows come first
    assert set(range(1000, 1000 + W)) <= set(table[:, 1].astype(int).tolist())  # the hard example
    assert sel.pending_rows == 5 * W  # the interval's sample stays in memory until the interval ends
    for p in pushes[20:]:
        sel.offer(p)
    assert sel.take("gw", 1, reservoir=False) == []
    sample, sample_flags = _decoded(sel.take("gw", 1))
    assert len(sample) == 5 * W and sample_flags.sum() == 0 and sel.pending_rows == 0


def test_buffer_bound_drops_lowest_priority_first_and_counts() -> None:
    scores = np.full(3000, 0.1)
    scores[2500] = 9.0
    sel = SyncSelector(SyncConfig(policy=SyncPolicy.FULL, max_buffered_rows=1000))
    for p in _pushes(scores):
        sel.offer(p)
    assert sel.dropped["all"] == len(scores) + W - 1 - 1000
    table, flags = _decoded(sel.take("gw", 1))
    assert len(table) == 1000 and table[-1, 1] == len(scores) + W - 2 and flags.sum() == 1


def test_smart_bound_keeps_flagged_rows_over_samples() -> None:
    scores = np.full(400, 0.1)
    scores[[10, 200, 390]] = 9.0
    sel = SyncSelector(SyncConfig(policy=SyncPolicy.SMART, max_buffered_rows=3 * W, sample_windows=10), seed=1)
    for p in _pushes(scores):
        sel.offer(p)
    table, flags = _decoded(sel.take("gw", 1))
    assert flags.sum() == 3 and len(table) == 3 * W
    assert 9 * W <= sel.dropped["sample"] <= 10 * W  # every sample (rows a flagged window holds are not repeated)


def test_packed_rows_are_bounded_and_validated() -> None:
    table = np.column_stack([np.arange(5.0), np.ones((5, 2))])
    ok = SyncBatch(v=PROTOCOL_VERSION, device="d", batch_id="b", features=["x", "y"], packed=pack_rows(table), flags=[0] * 5)
    assert np.array_equal(decode(Channel.SYNC, encode(ok)).table(), table)

    def bad(packed: str, features: list[str] | None = None) -> None:
        body = {"v": PROTOCOL_VERSION, "device": "d", "batch_id": "b", "features": features or ["x", "y"], "packed": packed}
        with pytest.raises(ProtocolError, match="packed rows|at least one row"):
            decode(Channel.SYNC, json.dumps(body).encode())

    def npy(a: np.ndarray) -> bytes:
        buf = io.BytesIO()
        np.save(buf, a, allow_pickle=True)
        return buf.getvalue()

    def z(raw: bytes) -> str:
        return base64.b64encode(zlib.compress(raw)).decode()

    bad(z(b"\0" * 50_000_000))  # a zip bomb stops at the row limit
    bad(pack_rows(table), ["x"])  # width does not match the features
    bad(z(npy(table.astype(np.float32))))
    bad(z(npy(np.array([[1, 2, None]], dtype=object))))
    bad(pack_rows(np.array([[np.nan, 1.0, 2.0]])))  # a row without a timestamp
    bad(pack_rows(np.zeros((MAX_SYNC_ROWS + 1, 3))))
    bad(pack_rows(np.zeros((0, 3))))
    bad("not base64!")
    bad(base64.b64encode(b"not zlib").decode())
    with pytest.raises(ValueError, match="rows or packed"):
        SyncBatch(v=PROTOCOL_VERSION, device="d", batch_id="b", features=["x", "y"], rows=[[1.0, 2.0, 3.0]], packed=pack_rows(table))


def test_sync_config_is_typed_and_described() -> None:
    cfg = load(SyncConfig, {"policy": "smart", "bandwidth_bytes_s": 500, "sample_windows": 3})
    assert cfg.policy == SyncPolicy.SMART and cfg.bandwidth_bytes_s == 500
    with pytest.raises(SchemaError):
        load(SyncConfig, {"policy": "some"})
    with pytest.raises(SchemaError):
        load(SyncConfig, {"bandwith": 5})
    with pytest.raises(SchemaError):
        load(SyncConfig, {"hard_margin": 1.5})


def test_smart_without_a_model_sends_everything_at_the_lowest_priority() -> None:
    """The hub needs data to train a first model: before one is active, smart uploads every reading."""
    ts = 1000.0 + np.arange(50)
    sel = SyncSelector(SyncConfig(policy=SyncPolicy.SMART, max_buffered_rows=30))
    for i in range(50):
        sel.offer(PushResult(1, {}, ReadingsBlock(ts[i : i + 1], FEATURES, np.ones((1, 2))), None, 0))
    assert sel.dropped["sample"] == 20
    table, _ = _decoded(sel.take("gw", None))
    assert np.array_equal(table[:, 0], ts[20:])
