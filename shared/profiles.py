"""Firmware profiles: what a class of gateway can run (``firmware_profiles/*.toml``)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from shared.inference import Runtime
from shared.schema import SchemaError, doc, load


@dataclass(frozen=True)
class FirmwareProfile:
    name: str = doc("Profile id, e.g. rpi4-64.")
    description: str = doc("The hardware and OS it describes.")
    arch: Literal["aarch64", "armv7l", "x86_64"] = doc("CPU architecture (`uname -m`).")
    runtime: Runtime = doc("Preferred TFLite runtime on this firmware.", default=Runtime.AUTO)
    num_threads: int = doc("Interpreter threads to use.", default=1)
    max_model_bytes: int = doc("Largest .tflite file the gateway accepts.", default=4 * 1024 * 1024)
    memory_budget_mb: int = doc("Resident memory the agent may use.", default=256)
    quantization: Literal["int8", "float16", "dynamic", "float32"] = doc("Quantization to ship.", default="int8")
    latency_p99_ms: float = doc("Largest p99 scoring latency per window a model may have on this gateway.",
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
