"""Keep the scorer's batch buffers mapped between batches (glibc malloc tuning for `edge-agent run`).

A batch of 1024 readings makes numpy temporaries of ~1 MB each (windows, wavelet coefficients, model
input and outputs).  glibc serves such blocks with a fresh ``mmap`` (or trims them off the heap top) and
every batch page-faults them in again: measured as ~20 % of the columnar scoring time
(docs/benchmarks.md).  Raising the mmap and trim thresholds keeps that working set in the heap; the
cost is that up to ``TRIM_BYTES`` of freed heap stays resident after a burst (idle RSS before any burst
is unchanged).  No-op where glibc's ``mallopt`` is not available (musl, macOS).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_BYTES = 8 * 1024 * 1024  # blocks below this come from the heap: every scoring temporary
TRIM_BYTES = 16 * 1024 * 1024  # free heap kept at the top before it is given back to the kernel


def keep_batch_memory() -> bool:
    """Set the thresholds; True if glibc accepted them."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return False
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_BYTES))
    if not ok:
        log.info("malloc thresholds not set (not glibc)")
    return ok
