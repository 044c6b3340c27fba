"""Is this gateway fit to run the agent? systemd notifications and watchdog, ``doctor`` checks, on-device bench.

The agent speaks the sd_notify protocol itself (one datagram per message on ``$NOTIFY_SOCKET``), so the
systemd unit can be ``Type=notify`` with ``WatchdogSec=`` without a systemd library on the gateway.
The watchdog is pinged from the scoring loop, so a scorer that hangs gets the agent restarted.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
import platform
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt

from edge_agent.config import AgentConfig, agent_profile
from edge_agent.detector import ActiveModel, StreamingDetector
from edge_agent.model_store import ModelStore
from shared.bundle import Bundle, BundleError, load_archive, load_dir
from shared.inference import Runtime, RuntimeUnavailable, interpreter_class
from shared.metrics import Latency, rss_mb, time_calls
from shared.mqtt import BrokerConfig, make_client, parse_url
from shared.profiles import FirmwareProfile
from shared.readings import ReadingsBlock
from shared.signing import parse_public_key

log = logging.getLogger(__name__)

TEST_HOOKS_ENV = "EDGESENTRY_TEST_HOOKS"  # "1": SIGUSR1 stalls the scoring loop (watchdog tests)
CLOCK_FLOOR = datetime(2025, 1, 1, tzinfo=UTC)  # a gateway without RTC/NTP boots far behind this
DEFAULT_MODEL_BYTES = 4 * 1024 * 1024  # a model's size allowance without a profile
BENCH_WINDOWS = 300


# ---------------------------------------------------------------------------------------------- systemd


class SystemdNotifier:
    """sd_notify(3): newline-separated ``KEY=value`` datagrams to ``$NOTIFY_SOCKET``; a no-op without it."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address  # '@' = abstract namespace
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) if address else None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *lines: str) -> None:
        if self._sock is None:
            return
        try:
            self._sock.sendto("\n".join(lines).encode(), self._address)
        except OSError as exc:  # systemd gone or socket not ours: never let this stop scoring
            if not self._warned:
                log.warning("sd_notify to %s failed: %s", self._address, exc)
                self._warned = True


class Watchdog:
    """``WATCHDOG=1`` at half of ``$WATCHDOG_USEC``, sent from the scoring loop's :meth:`ping`.

    The loop calls ping every iteration (it wakes at least every 0.5 s even when idle), so use
    ``WatchdogSec=`` of 2 s or more.  With ``EDGESENTRY_TEST_HOOKS=1``, SIGUSR1 makes the next ping
    block until ``release`` is set: the test of a hung scorer.
    """

    def __init__(self, notifier: SystemdNotifier, release: threading.Event,
                 env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.notifier = notifier
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        for_us = not pid or (pid.isdigit() and int(pid) == os.getpid())
        self.interval_s = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 and for_us else None
        self._next = 0.0
        self._release = release
        self._stall = threading.Event()
        self.test_hooks = env.get(TEST_HOOKS_ENV) == "1"

    def install_test_hook(self) -> None:
        """Main thread only: SIGUSR1 stalls the scorer (only when EDGESENTRY_TEST_HOOKS=1)."""
        if self.test_hooks:
            signal.signal(signal.SIGUSR1, lambda *_: self._stall.set())

    def ping(self) -> None:
        if self._stall.is_set():
            self.notifier.notify("STATUS=scoring loop stalled by test hook")
            self._release.wait()
        if self.interval_s is None:
            return
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.interval_s
            self.notifier.notify("WATCHDOG=1")


# ---------------------------------------------------------------------------------------------- doctor


class CheckStatus(enum.StrEnum):
    OK = "ok"
    WARN = "warn"  # works, but not as intended (the agent still runs)
    FAIL = "fail"  # the agent cannot work as configured
    SKIP = "skip"  # could not be checked because an earlier check failed


@dataclass(frozen=True)
class Check:
    name: str
    status: CheckStatus
    detail: str

    def line(self) -> str:
        return f"{self.status.value.upper():4}  {self.name:8}  {self.detail}"


@dataclass(frozen=True)
class BenchResult:
    """A model scored on this device the way the agent scores a trickle of readings (one window each)."""

    model: str
    model_version: int
    runtime: str
    num_threads: int
    model_bytes: int
    latency: Latency  # one reading pushed → one window preprocessed, interpreted and scored
    windows_per_s: float  # the same path with readings queued (batched windows)
    rss_mb: float  # this process, model loaded and benchmarked
    profile: str | None
    budget: dict[str, float] | None
    over_budget: list[str]

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["latency"] = {k: round(v, 3) if isinstance(v, float) else v for k, v in d["latency"].items()}
        return d


def bench(bundle: Bundle, runtime: Runtime, num_threads: int, profile: FirmwareProfile | None,
          windows: int = BENCH_WINDOWS) -> BenchResult:
    """Score synthetic readings within the model's training range through the agent's detector."""
    model = ActiveModel.from_bundle(bundle, runtime, num_threads)
    p = model.preprocessing
    lo = np.asarray(p.scale_min or [0.0] * len(p.features))
    hi = np.asarray(p.scale_max or [1.0] * len(p.features))
    rng = np.random.default_rng(0)
    n = windows + p.window + 8
    values = lo + (hi - lo) * rng.uniform(0, 1, (n, len(p.features)))
    ts = np.arange(n, dtype=np.float64)

    def block(a: int, b: int) -> ReadingsBlock:
        return ReadingsBlock(ts[a:b], tuple(p.features), values[a:b])

    detector = StreamingDetector()
    detector.swap(model)
    detector.push_block(block(0, p.window - 1))
    offset = p.window - 1
    latency = time_calls(lambda i: detector.push_block(block(offset + i, offset + i + 1)), windows)
    fresh = StreamingDetector()  # the same readings again, queued up: one block, batched windows
    fresh.swap(model)
    t = time.perf_counter()
    scored = fresh.push_block(block(0, min(n, 1024))).scored
    throughput = (len(scored) if scored is not None else 0) / (time.perf_counter() - t)
    result = BenchResult(
        model=model.name, model_version=model.version, runtime=model.model.runtime.value, num_threads=num_threads,
        model_bytes=len(bundle.model_bytes), latency=latency, windows_per_s=round(throughput, 1),
        rss_mb=round(rss_mb(), 1), profile=profile.name if profile else None,
        budget=None if profile is None else {"max_model_bytes": profile.max_model_bytes,
                                             "latency_p99_ms": profile.latency_p99_ms,
                                             "memory_budget_mb": profile.memory_budget_mb},
        over_budget=[],
    )
    return dataclasses.replace(result, over_budget=over_budget(result, profile))


def over_budget(r: BenchResult, profile: FirmwareProfile | None) -> list[str]:
    """One reason per budget of the profile the measured figures exceed."""
    if profile is None:
        return []
    reasons = []
    if r.model_bytes > profile.max_model_bytes:
        reasons.append(f"model {r.model_bytes} bytes > {profile.name}'s max_model_bytes {profile.max_model_bytes}")
    if r.latency.p99_ms > profile.latency_p99_ms:
        reasons.append(f"p99 {r.latency.p99_ms:.3f} ms per window > {profile.name}'s latency_p99_ms "
                       f"{profile.latency_p99_ms}")
    if r.rss_mb > profile.memory_budget_mb:
        reasons.append(f"RSS {r.rss_mb:.0f} MB > {profile.name}'s memory_budget_mb {profile.memory_budget_mb}")
    return reasons


def load_bundle(path: Path, trusted_keys: list[str]) -> Bundle:
    """A bundle directory or .tar.gz, verified against the trusted keys."""
    keys = [parse_public_key(k) for k in trusted_keys]
    if path.is_dir():
        return load_dir(path, keys)
    return load_archive(path.read_bytes(), keys)


def installed_bundle(cfg: AgentConfig) -> tuple[int | None, Bundle | None]:
    """The version the agent would start with and its verified bundle (BundleError if it does not verify).

    Reads only: the state directory is not created here (the doctor may run as another user).
    """
    if not (cfg.state_dir / "models").is_dir():
        return None, None
    store = ModelStore(cfg.state_dir, [parse_public_key(k) for k in cfg.trusted_keys])
    version = store.active_version()
    if version is None or not store.has(version):
        return None, None
    return version, store.load(version)


def probe_broker(cfg: BrokerConfig, timeout_s: float = 10.0) -> str:
    """Connect once with the agent's settings (TLS, credentials) under its own clean-session client id.

    Returns what was reached; raises ConnectionError with the reason otherwise.
    """
    host, port, tls = parse_url(cfg.url)
    probe = dataclasses.replace(cfg, client_id="")  # never take over the running agent's session
    try:
        client = make_client(probe, "edge-doctor", persistent=False)
    except (ValueError, OSError) as exc:  # a missing credential, an unreadable CA file
        raise ConnectionError(str(exc)) from None
    client.connect_timeout = timeout_s
    result: list[Any] = []
    done = threading.Event()

    def on_connect(_c: mqtt.Client, _u: object, _f: object, reason: Any, _p: object) -> None:
        result.append(reason)
        done.set()

    client.on_connect = on_connect
    try:
        client.connect(host, port, keepalive=cfg.keepalive_s)
    except (OSError, ValueError) as exc:  # refused, unreachable, DNS, TLS handshake/verification
        raise ConnectionError(f"cannot connect to {host}:{port}: {exc}") from None
    client.loop_start()
    try:
        if not done.wait(timeout_s):
            raise ConnectionError(f"{host}:{port} accepted TCP but sent no MQTT CONNACK within {timeout_s:.0f}s")
        if getattr(result[0], "is_failure", False):
            raise ConnectionError(f"{host}:{port} refused the connection: {result[0]}"
                                  + (f" (user {cfg.username!r})" if cfg.username else " (no username set)"))
    finally:
        client.disconnect()
        client.loop_stop()
    return f"connected to {cfg.url}" + (" over TLS" if tls else "") + (f" as {cfg.username}" if cfg.username else "")


def _ntp_synchronized() -> bool | None:
    if not shutil.which("timedatectl"):
        return None
    try:
        out = subprocess.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"], capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {"yes": True, "no": False}.get(out.stdout.strip())


class Doctor:
    """Every check the operator needs before leaving the agent on a gateway; one line each."""

    def __init__(self, cfg: AgentConfig, bundle_path: Path | None = None, broker_timeout_s: float = 10.0,
                 bench_windows: int = BENCH_WINDOWS) -> None:
        self.cfg = cfg
        self.profile = agent_profile(cfg)
        self.bundle_path = bundle_path
        self.broker_timeout_s = broker_timeout_s
        self.bench_windows = bench_windows
        self.bench_result: BenchResult | None = None
        self._bundle: Bundle | None = None

    def run(self, emit: Callable[[Check], None] = lambda c: None) -> list[Check]:
        checks = []
        for step in (self.check_config, self.check_runtime, self.check_keys, self.check_model, self.check_broker,
                     self.check_clock, self.check_disk, self.check_bench):
            check = step()
            emit(check)
            checks.append(check)
        return checks

    def check_config(self) -> Check:
        p = self.profile
        machine = platform.machine()
        detail = f"device {self.cfg.device_id}, state_dir {self.cfg.state_dir}, " + (
            f"profile {p.name}" if p else "no profile (budgets unchecked)")
        if p is None:
            return Check("config", CheckStatus.WARN, detail + "; set profile = \"<name>\" for this gateway")
        if machine != p.arch and not (p.arch == "armv7l" and machine == "aarch64"):
            return Check("config", CheckStatus.WARN, f"{detail}; profile {p.name} is for {p.arch}, this is {machine}")
        return Check("config", CheckStatus.OK, detail)

    def check_runtime(self) -> Check:
        wanted = self.cfg.detector.runtime
        try:
            _, found = interpreter_class(wanted)
        except RuntimeUnavailable as exc:
            extra = "pip install 'edgesentry[edge]' (64-bit) or 'edgesentry[edge-tflite]' (32-bit)"
            return Check("runtime", CheckStatus.FAIL, f"{exc}; {extra}")
        detail = f"{found.value} importable, {self.cfg.detector.num_threads} interpreter thread(s)"
        if found == Runtime.TENSORFLOW:
            return Check("runtime", CheckStatus.WARN, detail + ": full TensorFlow on a gateway; install LiteRT")
        if self.profile and self.profile.runtime not in (Runtime.AUTO, found):
            return Check("runtime", CheckStatus.WARN, f"{detail}; profile {self.profile.name} expects "
                                                      f"{self.profile.runtime.value}")
        return Check("runtime", CheckStatus.OK, detail)

    def check_keys(self) -> Check:
        for i, key in enumerate(self.cfg.trusted_keys):
            try:
                parse_public_key(key)
            except (ValueError, TypeError) as exc:
                return Check("keys", CheckStatus.FAIL, f"trusted_keys[{i}] is not a base64 Ed25519 public key: {exc}")
        return Check("keys", CheckStatus.OK, f"{len(self.cfg.trusted_keys)} trusted hub key(s) parse")

    def check_model(self) -> Check:
        try:
            if self.bundle_path is not None:
                self._bundle = load_bundle(self.bundle_path, self.cfg.trusted_keys)
                where = str(self.bundle_path)
            else:
                version, self._bundle = installed_bundle(self.cfg)
                where = f"{self.cfg.state_dir / 'models' / str(version)}"
        except (BundleError, OSError, ValueError) as exc:
            return Check("model", CheckStatus.FAIL, f"{exc} (is trusted_keys the hub's `cloud-hub init` key?)")
        if self._bundle is None:
            return Check("model", CheckStatus.WARN, "no model installed yet: the hub's rollout installs one "
                                                    "(or pass --bundle to bench one now)")
        m = self._bundle.manifest
        return Check("model", CheckStatus.OK, f"{m.name} v{m.version} ({m.quantization.mode}) verifies, {where}")

    def check_broker(self) -> Check:
        try:
            return Check("broker", CheckStatus.OK, probe_broker(self.cfg.broker, self.broker_timeout_s))
        except ConnectionError as exc:
            return Check("broker", CheckStatus.FAIL, str(exc))

    def check_clock(self) -> Check:
        now = datetime.now(UTC)
        if now < CLOCK_FLOOR:
            return Check("clock", CheckStatus.FAIL, f"system time {now:%Y-%m-%d %H:%M} is before "
                                                    f"{CLOCK_FLOOR:%Y-%m-%d}: no RTC and no NTP yet? Event times "
                                                    "would be wrong (enable systemd-timesyncd)")
        if self._bundle is not None:
            created = datetime.fromisoformat(self._bundle.manifest.created)
            if (created - now).total_seconds() > 3600:
                return Check("clock", CheckStatus.FAIL, f"system time {now:%Y-%m-%d %H:%M} UTC is behind the model's "
                                                        f"creation {created:%Y-%m-%d %H:%M} UTC: fix NTP")
        synced = _ntp_synchronized()
        detail = f"{now:%Y-%m-%d %H:%M:%S} UTC"
        if synced is False:
            return Check("clock", CheckStatus.WARN, detail + "; NTP not synchronized (timedatectl)")
        return Check("clock", CheckStatus.OK, detail + ("; NTP synchronized" if synced else "; NTP state unknown"))

    def check_disk(self) -> Check:
        state = self.cfg.state_dir
        existing = next((d for d in (state, *state.parents) if d.exists()), Path("/"))
        free = shutil.disk_usage(existing).free
        p = self.profile
        models = p.max_model_bytes if p else DEFAULT_MODEL_BYTES
        need = self.cfg.outbox.max_bytes + 3 * models  # the outbox's budget + active, previous, staged bundles
        why = f"outbox.max_bytes + 3 x max_model_bytes of {p.name}" if p else "outbox.max_bytes + 3 x 4 MiB models"
        mib = 1024 * 1024
        if free < need:
            return Check("disk", CheckStatus.FAIL, f"{free // mib} MiB free at {existing}, need {need // mib} MiB "
                                                   f"({why})")
        if not os.access(existing, os.W_OK):
            return Check("disk", CheckStatus.FAIL, f"{existing} is not writable by this user (uid {os.getuid()})")
        return Check("disk", CheckStatus.OK, f"{free // mib} MiB free at {existing} (need {need // mib} MiB: {why})")

    def check_bench(self) -> Check:
        if self._bundle is None:
            return Check("bench", CheckStatus.SKIP, "no verified model to benchmark")
        try:
            r = bench(self._bundle, self.cfg.detector.runtime, self.cfg.detector.num_threads, self.profile,
                      self.bench_windows)
        except (RuntimeError, ValueError) as exc:
            return Check("bench", CheckStatus.FAIL, f"model does not run here: {exc}")
        self.bench_result = r
        figures = (f"v{r.model_version} on {r.runtime} x{r.num_threads}: p50 {r.latency.p50_ms:.3f} / p99 "
                   f"{r.latency.p99_ms:.3f} ms per window, {r.windows_per_s:.0f} windows/s batched, "
                   f"RSS {r.rss_mb:.0f} MB, model {r.model_bytes} bytes")
        if r.over_budget:
            return Check("bench", CheckStatus.FAIL, "over budget: " + "; ".join(r.over_budget) + f" ({figures})")
        return Check("bench", CheckStatus.OK, figures + (f", within {r.profile}" if r.profile else ""))
