"""Firmware profiles: what a class of gateway can run, and the budgets a model must meet on it.

Profiles ship inside the package (``shared/firmware_profiles/*.toml``, also reachable as
``firmware_profiles/`` in a checkout), so an installed gateway finds ``rpi4-64`` by name.  Operators
add their own in ``/etc/edgesentry/profiles`` or in the directories named by ``$EDGESENTRY_PROFILES``
(``:``-separated), which are searched first.  :func:`resolve_profile` is the one resolver the agent,
the doctor and ``cloud-hub export --profile`` share.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from shared.inference import Quantization, Runtime
from shared.schema import SchemaError, doc, load

SHIPPED_DIR = Path(__file__).resolve().parent / "firmware_profiles"
SYSTEM_DIR = Path("/etc/edgesentry/profiles")
ENV_DIRS = "EDGESENTRY_PROFILES"


@dataclass(frozen=True)
class FirmwareProfile:
    name: str = doc("Profile id, e.g. rpi4-64 (the file's name without .toml).")
    description: str = doc("The hardware and OS it describes.")
    arch: Literal["aarch64", "armv7l", "x86_64"] = doc("CPU architecture (`uname -m`).")
    runtime: Runtime = doc("Preferred TFLite runtime on this firmware.", default=Runtime.AUTO)
    num_threads: int = doc("Interpreter threads: the agent's default and what export measures with.", default=1)
    max_model_bytes: int = doc("Largest .tflite file the gateway accepts (export refuses bigger).",
                               default=4 * 1024 * 1024)
    memory_budget_mb: int = doc("Resident memory (RSS) the agent may use with its model loaded.", default=256)
    quantization: Quantization = doc("Quantization export ships for this gateway unless -q says otherwise.",
                                     default=Quantization.INT8)
    latency_p99_ms: float = doc("Largest p99 latency to score one window alone (batch 1) on this gateway.",
                                default=20.0)
    outbox_max_bytes: int = doc("Disk the agent's outbox may use for undelivered reports.",
                                default=256 * 1024 * 1024)

    def __post_init__(self) -> None:
        if self.num_threads < 1 or self.max_model_bytes < 1 or self.memory_budget_mb < 16:
            raise ValueError("num_threads >= 1, max_model_bytes >= 1, memory_budget_mb >= 16")
        if self.latency_p99_ms <= 0 or self.outbox_max_bytes < 1024 * 1024:
            raise ValueError("latency_p99_ms > 0 and outbox_max_bytes >= 1 MiB")


def load_profile(path: Path) -> FirmwareProfile:
    try:
        return load(FirmwareProfile, tomllib.loads(path.read_text()))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SchemaError("", f"cannot read {path}: {exc}") from None


def search_dirs() -> list[Path]:
    """Where profile names are looked up, first match wins."""
    env = [Path(p) for p in os.environ.get(ENV_DIRS, "").split(os.pathsep) if p]
    return [*env, SYSTEM_DIR, SHIPPED_DIR]


def profile_names() -> list[str]:
    """Every profile name that :func:`resolve_profile` can find."""
    return sorted({p.stem for d in search_dirs() if d.is_dir() for p in d.glob("*.toml")})


def is_profile_path(ref: str | Path) -> bool:
    """Whether a profile reference is a file path rather than a name."""
    return "/" in str(ref) or str(ref).endswith(".toml")


def profile_path(ref: str | Path, base: Path | None = None) -> Path:
    """The file a profile reference names: by name (``rpi4-64``, searched in :func:`search_dirs`) or by
    path (anything with a ``/`` or ending in ``.toml``; relative paths are taken from ``base``, e.g. the
    config file's directory).  SchemaError if there is none."""
    text = str(ref)
    if not text:
        raise SchemaError("profile", "empty profile name")
    if is_profile_path(text):
        path = Path(text).expanduser()
        return base / path if base is not None and not path.is_absolute() else path
    for d in search_dirs():
        if (d / f"{text}.toml").is_file():
            return d / f"{text}.toml"
    raise SchemaError("profile", f"no firmware profile named {text!r}; known: {', '.join(profile_names())} "
                                 f"(or give a path to a .toml)")


def resolve_profile(ref: str | Path, base: Path | None = None) -> FirmwareProfile:
    """The profile a reference names (see :func:`profile_path`), loaded and validated."""
    return load_profile(profile_path(ref, base))
