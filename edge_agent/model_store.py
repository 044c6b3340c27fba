"""Verified bundles on the gateway's disk, and assembly of bundles arriving in chunks.

Layout under ``state_dir``::

    models/<version>/   verified bundle files (re-verified on every load)

Which version runs is the update machine's record (``update.json``, edge_agent/update.py).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from shared import bundle as bundle_fmt
from shared.protocol import ModelAnnouncement, ModelChunk
from shared.signing import TrustedKey

log = logging.getLogger(__name__)


@dataclass
class Assembly:
    """Chunks of one announced archive, collected until complete."""

    announcement: ModelAnnouncement
    started: float = field(default_factory=time.monotonic)
    last_progress: float = field(default_factory=time.monotonic)
    requests: int = 0
    parts: dict[int, bytes] = field(default_factory=dict)

    def add(self, chunk: ModelChunk) -> bool:
        """Store a chunk; True when every chunk is in.  A chunk that cannot belong to the announced
        archive raises ValueError and changes nothing (a forged chunk must not spoil the download)."""
        a = self.announcement
        if chunk.version != a.version or chunk.sha256 != a.sha256 or chunk.total != a.chunks:
            raise ValueError("chunk does not belong to the announced archive")
        try:
            data = base64.b64decode(chunk.data, validate=True)
        except binascii.Error:
            raise ValueError("chunk data is not base64") from None
        others = sum(len(p) for i, p in self.parts.items() if i != chunk.index)
        if others + len(data) > a.size:
            raise ValueError("chunks exceed the announced size")
        self.parts[chunk.index] = data
        self.last_progress = time.monotonic()
        return len(self.parts) == a.chunks

    def archive(self) -> bytes:
        data = b"".join(self.parts[i] for i in range(self.announcement.chunks))
        if len(data) != self.announcement.size or hashlib.sha256(data).hexdigest() != self.announcement.sha256:
            raise ValueError("assembled archive does not match the announced size/sha256")
        return data


class ModelStore:
    def __init__(self, state_dir: Path, trusted: Sequence[TrustedKey]) -> None:
        self.root = state_dir
        self.models = state_dir / "models"
        self.models.mkdir(parents=True, exist_ok=True)
        self.trusted = trusted

    def install(self, archive: bytes) -> bundle_fmt.Bundle:
        """Verify an archive and write it to disk. Raises BundleError; nothing is written then."""
        bundle = bundle_fmt.load_archive(archive, self.trusted)
        version = bundle.manifest.version
        tmp = self.models / f".{version}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        bundle_fmt.write_dir(tmp, bundle.files)
        final = self.models / str(version)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        return bundle

    def load(self, version: int) -> bundle_fmt.Bundle:
        return bundle_fmt.load_dir(self.models / str(version), self.trusted)

    def has(self, version: int) -> bool:
        return (self.models / str(version) / bundle_fmt.MANIFEST).exists()
