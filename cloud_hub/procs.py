"""Child processes that do not outlive their parent.

The demo and the benchmarks start brokers, a hub and agents as subprocesses.  If the parent is
SIGKILLed (a test timeout, an operator's ``kill -9``) its ``finally`` blocks never run; on Linux the
kernel can still stop the children for us (``PR_SET_PDEATHSIG``).  Elsewhere this is a no-op.
"""

from __future__ import annotations

import ctypes
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


# Resolved once, in the parent: between fork and exec the child only calls the function (no dlopen).
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` for :class:`subprocess.Popen` (None where the platform cannot do it)."""
    return _die_with_parent if _prctl is not None else None
