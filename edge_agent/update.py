"""Model update lifecycle: one state machine with one transition table, persisted on every transition.

Modelled on Mender's update client: every state is written to disk (temp file + fsync + rename) before
its work starts, so a restart knows where it was; a new model is checked before it runs and during a
probation afterwards, and a model that misbehaves returns the gateway to the last committed one by itself.

    NONE/COMMITTED/FAILED/ROLLED_BACK --announce--> DOWNLOADING --complete--> VERIFYING --loaded--> STAGED
    STAGED --checks pass--> ACTIVE (probation) --probation passes--> COMMITTED
    DOWNLOADING/VERIFYING/STAGED --refused--> FAILED        ACTIVE --health check fails--> ROLLED_BACK

Restart recovery: interrupted in DOWNLOADING/VERIFYING/STAGED, the agent boots on the committed model and
retries when the announcement arrives again (after ``max_restarts`` interruptions of the same version it is
refused). Interrupted in ACTIVE, it boots on the candidate and starts probation again (after
``max_restarts`` it rolls back). Readings are scored by the running model throughout.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from edge_agent.config import AgentConfig, UpdateConfig
from edge_agent.detector import BUFFER_READINGS, ActiveModel, ScoredBatch, StreamingDetector
from edge_agent.model_store import Assembly, ModelStore
from shared.bundle import Bundle, BundleError
from shared.metrics import rss_mb
from shared.profiles import FirmwareProfile
from shared.protocol import (
    Channel,
    ModelAnnouncement,
    ModelChunk,
    ModelState,
    ProtocolError,
    RejectReason,
    decode,
)
from shared.readings import ReadingsBlock
from shared.signing import SignatureError, TrustedKey, verify_announcement

log = logging.getLogger(__name__)

S = ModelState
_IN_FLIGHT = (S.DOWNLOADING, S.VERIFYING, S.STAGED)
_SETTLED = (S.NONE, S.COMMITTED, S.FAILED, S.ROLLED_BACK)

# The one transition table. "Settled" states start a new update; in-flight ones may also be abandoned
# (back to NONE/COMMITTED) when superseded or interrupted by a restart.
TRANSITIONS: dict[ModelState, frozenset[ModelState]] = {
    S.NONE: frozenset({S.DOWNLOADING, S.VERIFYING}),
    S.COMMITTED: frozenset({S.DOWNLOADING, S.VERIFYING}),
    S.FAILED: frozenset({S.DOWNLOADING, S.VERIFYING}),
    S.ROLLED_BACK: frozenset({S.DOWNLOADING, S.VERIFYING}),
    S.DOWNLOADING: frozenset({S.DOWNLOADING, S.VERIFYING, S.FAILED, S.NONE, S.COMMITTED}),
    S.VERIFYING: frozenset({S.STAGED, S.FAILED, S.NONE, S.COMMITTED}),
    S.STAGED: frozenset({S.ACTIVE, S.FAILED, S.NONE, S.COMMITTED}),
    S.ACTIVE: frozenset({S.COMMITTED, S.ROLLED_BACK}),
}

STATE_FILE = "update.json"
LATENCY_SAMPLES = 4096  # latency p99 over the most recent scoring calls (bounded memory on long probations)
KILL_ENV = "EDGESENTRY_TEST_KILL_AT"  # test hook: SIGKILL the agent right after persisting this state


class TransitionError(RuntimeError):
    """A transition the table does not allow: a bug, never bad input."""


@dataclass
class UpdateRecord:
    """What is persisted at every transition."""

    state: ModelState = S.NONE
    committed: int | None = None  # last model that passed probation: the rollback target
    previous: int | None = None  # the committed model before it (fallback if ``committed`` no longer verifies)
    candidate: int | None = None  # the version in flight (downloading .. on probation)
    rollout_id: int | None = None  # rollout that announced the candidate
    error: str = ""  # why the last update was refused or rolled back
    failed_version: int | None = None
    refused: dict[int, tuple[str, int | None]] = field(default_factory=dict)  # version -> (reason, rollout)
    restarts: int = 0  # agent restarts while ``candidate`` was in flight

    def to_json(self) -> str:
        d = asdict(self)
        d["state"] = self.state.value
        d["refused"] = {str(k): list(v) for k, v in self.refused.items()}
        return json.dumps(d, indent=1)

    @classmethod
    def from_json(cls, text: str) -> UpdateRecord:
        d = json.loads(text)
        d["state"] = ModelState(d["state"])
        d["refused"] = {int(k): (str(v[0]), v[1]) for k, v in d.get("refused", {}).items()}
        return cls(**d)


class RecordFile:
    """The persisted record: written atomically and durably (temp file, fsync, rename, fsync the directory)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / STATE_FILE
        self.dir = state_dir

    def load(self) -> UpdateRecord:
        try:
            return UpdateRecord.from_json(self.path.read_text())
        except FileNotFoundError:  # gateways from before the state machine kept plain pointer files
            active, previous = _read_int(self.dir / "active"), _read_int(self.dir / "previous")
            return UpdateRecord(state=S.COMMITTED if active is not None else S.NONE, committed=active,
                                previous=previous)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("%s unreadable (%s): starting from the models on disk", self.path, exc)
            return UpdateRecord()

    def save(self, rec: UpdateRecord) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write(rec.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if os.environ.get(KILL_ENV) == rec.state.value:
            log.warning("%s=%s: killing the agent", KILL_ENV, rec.state.value)
            os.kill(os.getpid(), signal.SIGKILL)


def boot_version(state_dir: Path) -> int | None:
    """The version the agent starts with: the candidate on probation, else the committed model."""
    rec = RecordFile(state_dir).load()
    return rec.candidate if rec.state == S.ACTIVE else rec.committed


def provision(state_dir: Path, version: int) -> None:
    """Mark an installed bundle as the committed model (pre-provisioned gateways, tests, benchmarks)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    RecordFile(state_dir).save(UpdateRecord(state=S.COMMITTED, committed=version))


# ---------------------------------------------------------------------------------------- health checks

@dataclass
class Health:
    """Scored windows of one model, accumulated for a verdict."""

    windows: int = 0
    flagged: int = 0
    nonfinite: int = 0
    latencies_s: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))

    def add(self, scored: ScoredBatch, seconds_per_window: float) -> None:
        """One scoring call: its windows and its time per window (one latency sample per call)."""
        if not len(scored):
            return
        self.windows += len(scored)
        self.flagged += int(np.count_nonzero(scored.anomalous))
        self.nonfinite += int(np.count_nonzero(~np.isfinite(scored.scores)))
        self.latencies_s.append(seconds_per_window)

    @property
    def latency_p99_ms(self) -> float:
        return float(np.percentile(self.latencies_s, 99)) * 1000 if self.latencies_s else 0.0

    @property
    def rate(self) -> float:
        return self.flagged / self.windows if self.windows else 0.0

    def verdict(self, cfg: UpdateConfig, profile: FirmwareProfile | None,
                reference_rate: float | None = 0.0) -> str | None:
        """Why the model is unhealthy, or None. Non-finite scores fail at once; rates need min_windows.

        The flag rate is judged against ``reference_rate``, the running model's rate on the same recent
        data: a real burst of anomalies is no reason to refuse a model that agrees it is one.  ``None``:
        there is no model to compare with (nor to go back to), so the rate is not judged at all — a
        gateway's first model that meets anomalies on probation must not leave it with no model.
        """
        if self.nonfinite:
            return f"non-finite scores on {self.nonfinite} of {self.windows} windows"
        if self.windows < cfg.min_windows:
            return None
        if reference_rate is not None and self.rate - reference_rate > cfg.max_anomaly_rate:
            return (f"flags {self.rate:.0%} of {self.windows} windows, the running model {reference_rate:.0%} "
                    f"(max_anomaly_rate {cfg.max_anomaly_rate:.0%} more)")
        if profile is not None and self.latency_p99_ms > profile.latency_p99_ms:
            return (f"latency p99 {self.latency_p99_ms:.3f} ms per window exceeds profile {profile.name}'s "
                    f"{profile.latency_p99_ms} ms")
        return None


def staged_health(model: ActiveModel, recent: ReadingsBlock, threshold_scale: float) -> Health:
    """Score the recent readings with a staged model, one window per call as they would arrive."""
    det = StreamingDetector(threshold_scale, max_batch=1)
    det.swap(model)
    w = model.preprocessing.window

    def rows(a: int, b: int) -> ReadingsBlock:
        return ReadingsBlock(recent.ts[a:b], recent.features, recent.values[a:b])

    det.push_block(rows(0, w - 1))
    health = Health()
    for i in range(w - 1, len(recent)):
        t0 = time.perf_counter()
        scored = det.push_block(rows(i, i + 1)).scored
        if scored is not None:
            health.add(scored, time.perf_counter() - t0)
    return health


def budget_error(bundle: Bundle, profile: FirmwareProfile | None) -> str | None:
    """Model bytes against the profile, checked before the model is loaded."""
    if profile is not None and len(bundle.model_bytes) > profile.max_model_bytes:
        return (f"model is {len(bundle.model_bytes)} bytes, profile {profile.name} allows "
                f"{profile.max_model_bytes}")
    return None


# ---------------------------------------------------------------------------------------- the machine

def verified_announcement(trusted: Sequence[TrustedKey], payload: bytes | bytearray) -> ModelAnnouncement:
    """Decode a model announcement and check the hub's signature; ProtocolError otherwise."""
    ann: ModelAnnouncement = decode(Channel.MODEL, payload)
    try:
        verify_announcement(trusted, ann)
    except SignatureError as exc:
        raise ProtocolError(RejectReason.BAD_SIGNATURE, str(exc)) from None
    return ann



@dataclass
class _Probation:
    fallback: ActiveModel | None
    reference_rate: float | None = 0.0  # the running model's flag rate before the swap; None: no running model
    started: float = field(default_factory=time.monotonic)
    health: Health = field(default_factory=Health)
    first_ts: float | None = None  # end of the first window the candidate scored
    shadow: StreamingDetector | None = None  # the fallback on the same readings (see Updater._reference)
    shadow_health: Health = field(default_factory=Health)


def flag_health(det: StreamingDetector, block: ReadingsBlock, health: Health) -> None:
    """Push ``block`` into ``det`` and count the decisions of its model in ``health``."""
    for a in range(0, len(block), BUFFER_READINGS // 2):
        scored = det.push_block(ReadingsBlock(block.ts[a : a + BUFFER_READINGS // 2], block.features,
                                              block.values[a : a + BUFFER_READINGS // 2])).scored
        if scored is not None:
            health.add(scored, 0.0)


class Updater:
    """Owns the model lifecycle; the agent feeds it messages, scored windows and clock ticks.

    ``swap(model)`` puts a model in front of the scorer; ``request(version)`` asks the hub for a
    bundle; ``publish_status()`` sends the agent's status (which reads :meth:`status_fields`).
    """

    def __init__(self, cfg: AgentConfig, store: ModelStore, detector: StreamingDetector,
                 profile: FirmwareProfile | None, swap: Callable[[ActiveModel | None], None],
                 request: Callable[[int], None], publish_status: Callable[[], None]) -> None:
        self.cfg = cfg
        self.ucfg = cfg.update
        self.store = store
        self.detector = detector
        self.profile = profile
        self._swap = swap
        self._request_cb = request
        self._publish = publish_status
        self.file = RecordFile(cfg.state_dir)
        self.rec = UpdateRecord()
        self._lock = threading.RLock()
        self._fleet_ann: ModelAnnouncement | None = None
        self._device_ann: ModelAnnouncement | None = None
        self._assembly: Assembly | None = None
        self._probation: _Probation | None = None
        # The running model's own recent decisions: the reference a staged model's flag rate is judged against.
        self._running_flags: deque[bool] = deque(maxlen=self.ucfg.recent_windows)
        self._flags_lock = threading.Lock()

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> ModelState:
        return self.rec.state

    def _enter(self, state: ModelState, **changes: object) -> None:
        """The only place the state changes: check the table, persist, then report. Caller holds the lock."""
        if state not in TRANSITIONS[self.rec.state]:
            raise TransitionError(f"{self.rec.state.value} -> {state.value} is not a valid transition")
        log.info("model update: %s -> %s %s", self.rec.state.value, state.value,
                 " ".join(f"{k}={v}" for k, v in changes.items() if k != "refused"))
        self.rec = replace(self.rec, state=state, **changes)  # type: ignore[arg-type]
        self.file.save(self.rec)
        self._publish()

    def _idle(self) -> ModelState:
        return S.COMMITTED if self.rec.committed is not None else S.NONE

    def status_fields(self) -> dict[str, object]:
        with self._lock:
            target = self._target()
            return {"model_state": self.rec.state, "error": self.rec.error[:500],
                    "failed_version": self.rec.failed_version,
                    "rollout_id": target.rollout_id if target else self.rec.rollout_id}

    def _load(self, version: int) -> ActiveModel:
        bundle = self.store.load(version)
        return ActiveModel.from_bundle(bundle, self.cfg.detector.runtime, self.cfg.detector.num_threads)

    # ------------------------------------------------------------------ boot

    def boot(self) -> None:
        """Resume from the persisted record: run the committed model (or the candidate on probation)."""
        with self._lock:
            self.rec = self.file.load()
            st = self.rec.state
            if st == S.ACTIVE:
                self._resume_probation()
                return
            if st in _IN_FLIGHT:
                self._recover_in_flight()
            self._boot_committed()

    def _recover_in_flight(self) -> None:
        version, restarts = self.rec.candidate, self.rec.restarts + 1
        if version is not None and restarts >= self.ucfg.max_restarts:
            reason = f"agent restarted {restarts} times while the update was {self.rec.state.value}"
            self._refuse(version, reason)
        else:
            log.warning("update to v%s interrupted while %s: back on the committed model, will retry",
                        version, self.rec.state.value)
            self._enter(self._idle(), restarts=restarts)

    def _boot_committed(self) -> None:
        for version in (self.rec.committed, self.rec.previous):
            if version is None or not self.store.has(version):
                continue
            try:
                self._swap(self._load(version))
            except (BundleError, ValueError, RuntimeError) as exc:
                log.error("stored model v%d unusable: %s", version, exc)
                continue
            if version != self.rec.committed:  # fall back for good: the committed one no longer verifies
                self.rec = replace(self.rec, committed=version, previous=None)
                self.file.save(self.rec)
            return

    def _resume_probation(self) -> None:
        candidate, restarts = self.rec.candidate, self.rec.restarts + 1
        assert candidate is not None
        fallback = None
        if self.rec.committed is not None and self.store.has(self.rec.committed):
            try:
                fallback = self._load(self.rec.committed)
            except (BundleError, ValueError, RuntimeError) as exc:
                log.error("committed model v%d unusable: %s", self.rec.committed, exc)
        self._probation = _Probation(fallback, 0.0 if fallback is not None else None)
        if restarts >= self.ucfg.max_restarts:
            self._rollback(f"agent restarted {restarts} times during probation")
            return
        try:
            model = self._load(candidate)
        except (BundleError, ValueError, RuntimeError) as exc:
            self._rollback(f"candidate no longer loads after restart: {exc}")
            return
        self.rec = replace(self.rec, restarts=restarts)
        self.file.save(self.rec)
        self._swap(model)
        log.info("resumed probation of v%d after a restart (%d)", candidate, restarts)

    # ------------------------------------------------------------------ announcements and download

    def on_announcement(self, fleet: bool, ann: ModelAnnouncement | None) -> None:
        with self._lock:
            if fleet:
                self._fleet_ann = ann
            else:
                self._device_ann = ann
        self.maybe_start()

    def _target(self) -> ModelAnnouncement | None:
        return self._device_ann or self._fleet_ann

    def _refused(self, ann: ModelAnnouncement) -> bool:
        """A refused version is retried only when a new rollout announces it."""
        entry = self.rec.refused.get(ann.version)
        return entry is not None and entry[1] == ann.rollout_id

    def maybe_start(self) -> None:
        """Start updating to the announced version if it is new, not refused and nothing else is in flight."""
        with self._lock:
            st, target = self.rec.state, self._target()
            if st in (S.VERIFYING, S.STAGED, S.ACTIVE):
                return  # reconsidered when it settles
            running = self.rec.committed
            if target is None or target.version == running or self._refused(target):
                if st == S.DOWNLOADING:  # the announcement that started it was withdrawn or superseded
                    self._assembly = None
                    self._enter(self._idle(), candidate=None)
                return
            if st == S.DOWNLOADING and self._assembly is not None and self._assembly.announcement == target:
                return
            restarts = self.rec.restarts if self.rec.candidate == target.version else 0
            refused = {v: e for v, e in self.rec.refused.items() if v != target.version}
            if self.store.has(target.version):
                self._assembly = None
                self._enter(S.VERIFYING, candidate=target.version, rollout_id=target.rollout_id,
                            restarts=restarts, refused=refused)
                version = target.version
                threading.Thread(target=self._install, args=(version, lambda: self.store.load(version)),
                                 name="installer", daemon=True).start()
                return
            self._assembly = Assembly(target)
            self._enter(S.DOWNLOADING, candidate=target.version, rollout_id=target.rollout_id,
                        restarts=restarts, refused=refused)
        self._request(target.version)

    def _request(self, version: int) -> None:
        with self._lock:
            if self._assembly is not None:
                self._assembly.requests += 1
        self._request_cb(version)
        log.info("requested model v%d", version)

    def on_chunk(self, chunk: ModelChunk) -> None:
        """Collect a chunk.  Chunks that cannot belong are rejected (``bad_chunk``) and the download
        goes on; an archive that does not match the announced size/SHA-256 is fetched again."""
        with self._lock:
            asm = self._assembly
            if asm is None or chunk.version != asm.announcement.version or self.rec.state != S.DOWNLOADING:
                return  # a late chunk of a superseded download
            try:
                complete = asm.add(chunk)
            except ValueError as exc:
                raise ProtocolError(RejectReason.BAD_CHUNK, str(exc)) from None
            if not complete:
                return
            try:
                archive = asm.archive()
            except ValueError as exc:
                asm.parts.clear()
                if asm.requests >= self.ucfg.download_attempts:
                    self._assembly = None
                    self._refuse(chunk.version, f"download: {exc}")
                    return
                log.warning("model v%d: %s; fetching it again", chunk.version, exc)
            else:
                self._assembly = None
                self._enter(S.VERIFYING)
                threading.Thread(target=self._install, args=(chunk.version, lambda: self.store.install(archive)),
                                 name="installer", daemon=True).start()
                return
        self._request(chunk.version)

    def tick(self, now: float | None = None) -> None:
        """Housekeeping: re-request stalled downloads, end probation when it has passed."""
        now = time.monotonic() if now is None else now
        retry = None
        with self._lock:
            asm = self._assembly
            if asm is not None and self.rec.state == S.DOWNLOADING and now - asm.last_progress >= self.ucfg.download_stall_s:
                if asm.requests >= self.ucfg.download_attempts:
                    self._assembly = None
                    self._refuse(asm.announcement.version, f"download stalled after {asm.requests} requests")
                else:
                    asm.last_progress = now
                    retry = asm.announcement.version
            p = self._probation
            if (p is not None and self.rec.state == S.ACTIVE and now - p.started >= self.ucfg.probation_s
                    and p.health.windows >= self.ucfg.min_windows):
                self._commit()
        if retry is not None:
            self._request(retry)

    # ------------------------------------------------------------------ verify, stage, activate

    def _install(self, version: int, get_bundle: Callable[[], Bundle]) -> None:
        """VERIFYING (signature, manifest, budgets, load) → STAGED (checks on recent data) → ACTIVE."""
        try:
            bundle = get_bundle()
            if bundle.manifest.version != version:
                raise ValueError(f"bundle says version {bundle.manifest.version}, announced {version}")
            too_big = budget_error(bundle, self.profile)
            if too_big:
                raise ValueError(too_big)
            model = ActiveModel.from_bundle(bundle, self.cfg.detector.runtime, self.cfg.detector.num_threads)
            rss = rss_mb()
            if self.profile is not None and rss > self.profile.memory_budget_mb:
                raise ValueError(f"agent RSS {rss:.0f} MB with the new model loaded exceeds profile "
                                 f"{self.profile.name}'s {self.profile.memory_budget_mb} MB")
        except (BundleError, ValueError, RuntimeError) as exc:
            with self._lock:
                self._refuse(version, str(exc))
            self.maybe_start()
            return
        with self._lock:
            self._enter(S.STAGED)
        reason, reference_rate = self._staged_check(model)
        with self._lock:
            if reason is not None:
                self._refuse(version, f"staged check: {reason}")
            else:
                fallback = self.detector.model if self.rec.committed is not None else None
                self._probation = _Probation(fallback, reference_rate if fallback is not None else None)
                if fallback is None:
                    log.info("v%d is the gateway's first model: on probation its flag rate is not judged "
                             "(nothing to compare with or to go back to)", version)
                self._swap(model)  # before the transition, so the status it sends names the new model
                self._enter(S.ACTIVE)
        self.maybe_start()

    def _staged_check(self, model: ActiveModel) -> tuple[str | None, float | None]:
        """(why the staged model is refused or None, the running model's flag rate on the same data, None
        when no model runs)."""
        w = model.preprocessing.window
        readings = self.detector.recent_readings(self.ucfg.recent_windows + w - 1)
        windows = len(readings) - w + 1
        if windows < self.ucfg.min_windows:
            log.info("only %d recent windows: v%d goes to probation without a staged data check",
                     max(windows, 0), model.version)
            return None, 0.0
        health = staged_health(model, readings, self.cfg.detector.threshold_scale)
        with self._flags_lock:  # the running interpreter belongs to the scorer: use its decisions, not it
            flags = list(self._running_flags)
        reference: float | None = None
        if self.rec.committed is not None and self.detector.model is not None:
            reference = sum(flags) / len(flags) if len(flags) >= self.ucfg.min_windows else 0.0
        log.info("staged v%d on %d recent windows: %d flagged (running model %s), %d non-finite, "
                 "latency p99 %.3f ms", model.version, health.windows, health.flagged,
                 "none" if reference is None else f"{reference:.0%}",
                 health.nonfinite, health.latency_p99_ms)
        verdict = health.verdict(replace(self.ucfg, min_windows=min(self.ucfg.min_windows, health.windows)),
                                 self.profile, reference)
        return verdict, reference

    # ------------------------------------------------------------------ probation

    def observe(self, scored: ScoredBatch | None, elapsed_s: float) -> None:
        """Live health check: the scorer reports each scored block and how long scoring it took."""
        if scored is not None and len(scored) and scored.model_version != self.rec.candidate:
            with self._flags_lock:
                self._running_flags.extend(scored.anomalous.tolist())
        p = self._probation
        if p is None or scored is None or not len(scored) or self.rec.state != S.ACTIVE:
            return
        with self._lock:
            if self._probation is not p or self.rec.state != S.ACTIVE or scored.model_version != self.rec.candidate:
                return
            if p.first_ts is None:
                p.first_ts = float(scored.ts[0])
            p.health.add(scored, elapsed_s / len(scored))
            reason = p.health.verdict(self.ucfg, self.profile, p.reference_rate)
            if p.shadow is not None or (reason is not None and p.health.nonfinite == 0):
                reason = p.health.verdict(self.ucfg, self.profile, self._reference(p))
            if reason is not None:
                self._rollback(f"probation: {reason}")

    def _reference(self, p: _Probation) -> float | None:
        """The flag rate the candidate is judged against on probation: the fallback's on the same readings.

        The rate before the swap is a fair reference only while the data stay alike; a real anomaly
        arriving on probation makes any sound model flag its windows.  So once the candidate exceeds that
        rate by more than ``max_anomaly_rate``, the fallback (kept loaded, idle on probation) scores the
        probation's readings too, and from then on every block alongside the candidate: the comparison is
        on the same windows, as in the staged check, and costs nothing while the candidate stays within
        the limit.
        Caller holds the lock (on the scorer thread).  Beyond the buffer (``BUFFER_READINGS``) the fallback
        judges the most recent readings of the probation."""
        fb = p.fallback
        if fb is None or p.first_ts is None:
            return p.reference_rate
        if p.shadow is None:
            p.shadow = StreamingDetector(self.detector.threshold_scale, self.detector.max_batch)
            p.shadow.swap(fb)
            recent = self.detector.recent_readings(BUFFER_READINGS)
            start = max(0, int(np.searchsorted(recent.ts, p.first_ts)) - (fb.preprocessing.window - 1))
            block = ReadingsBlock(recent.ts[start:], recent.features, recent.values[start:])
            log.info("v%s flags %.0f%% of %d windows on probation (the running model %.0f%% before the swap): "
                     "v%d scores the same readings", self.rec.candidate, 100 * p.health.rate, p.health.windows,
                     100 * (p.reference_rate or 0.0), fb.version)
        else:  # the readings since the last call
            recent = self.detector.recent_readings(BUFFER_READINGS)
            new = recent.ts > p.shadow.last_ts
            block = ReadingsBlock(recent.ts[new], recent.features, recent.values[new])
        flag_health(p.shadow, block, p.shadow_health)
        if not p.shadow_health.windows:
            return p.reference_rate
        return p.shadow_health.rate

    def _commit(self) -> None:
        p = self._probation
        self._probation = None
        log.info("v%s passed probation (%d windows)", self.rec.candidate, p.health.windows if p else 0)
        self._enter(S.COMMITTED, committed=self.rec.candidate, previous=self.rec.committed, candidate=None,
                    restarts=0)
        threading.Thread(target=self.maybe_start, daemon=True).start()

    def _rollback(self, reason: str) -> None:
        """Back to the previous committed model at once; the bad version is not retried in this rollout."""
        p = self._probation
        self._probation = None
        version = self.rec.candidate
        assert version is not None
        self._swap(p.fallback if p else None)
        log.error("model v%d rolled back: %s", version, reason)
        self._enter(S.ROLLED_BACK, candidate=None, error=reason, failed_version=version, restarts=0,
                    refused={**self.rec.refused, version: (reason, self.rec.rollout_id)})
        threading.Thread(target=self.maybe_start, daemon=True).start()  # something else may be announced

    def _refuse(self, version: int, reason: str) -> None:
        """Caller holds the lock. Refused before activation: the running model never stopped."""
        log.error("model v%d refused: %s", version, reason)
        self._enter(S.FAILED, candidate=None, error=reason, failed_version=version, restarts=0,
                    refused={**self.rec.refused, version: (reason, self.rec.rollout_id)})


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
