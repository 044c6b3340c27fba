"""Bundle transfer: chunking on the hub, reassembly and checks on the agent."""

from __future__ import annotations

import hashlib
import random

import pytest

from cloud_hub.rollout import chunks
from edge_agent.model_store import Assembly
from shared.protocol import CHUNK_BYTES, PROTOCOL_VERSION, Channel, ModelAnnouncement, decode, encode


def _announce(archive: bytes, n: int) -> ModelAnnouncement:
    return ModelAnnouncement(v=PROTOCOL_VERSION, version=4, name="ae-lstm", sha256=hashlib.sha256(archive).hexdigest(),
                             size=len(archive), chunks=n, rollout_id=1)


def _archive(n: int) -> bytes:
    """Incompressible bytes, the same every run (a failure reproduces)."""
    return random.Random(n).randbytes(n)


def test_large_archive_travels_in_chunks_in_any_order() -> None:
    archive = _archive(2 * CHUNK_BYTES + 123)
    parts = chunks(archive, 4, hashlib.sha256(archive).hexdigest())
    assert len(parts) == 3
    wire = [decode(Channel.MODEL_CHUNK, encode(c)) for c in parts]  # each fits the message limit
    asm = Assembly(_announce(archive, len(parts)))
    assert not asm.add(wire[2]) and not asm.add(wire[0])
    assert not asm.add(wire[0])  # a redelivered chunk is harmless
    assert asm.add(wire[1])
    assert asm.archive() == archive


def test_corrupt_or_foreign_chunks_are_refused() -> None:
    archive = _archive(CHUNK_BYTES + 10)
    parts = chunks(archive, 4, hashlib.sha256(archive).hexdigest())
    asm = Assembly(_announce(archive, 2))
    other = chunks(b"x" * 10, 5, "0" * 64)[0]
    with pytest.raises(ValueError, match="does not belong"):
        asm.add(other)
    with pytest.raises(ValueError, match="not base64"):
        asm.add(parts[1].__class__(**{**parts[1].__dict__, "data": "!!not base64!!"}))

    tampered = archive[:-1] + bytes([archive[-1] ^ 0xFF])  # always differs from the genuine byte
    announced = _announce(archive, 2)  # the hub announced the genuine archive's hash and size
    asm2 = Assembly(announced)
    for c in chunks(tampered, 4, announced.sha256):  # chunks of other bytes under that hash
        asm2.add(c)
    with pytest.raises(ValueError, match="does not match"):
        asm2.archive()
