"""When to retrain and when a challenger wins: the ``[retrain]`` section of hub.toml and the pure functions
that apply it.

:func:`due` is the one trigger rule.  It takes plain numbers (:class:`TriggerInputs`), so `serve`'s
scheduler (which measures them from the database, :mod:`cloud_hub.registry.triggers`) and an offline
replay such as `cloud-hub nab --retrain-every` (which counts readings itself) apply the same policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from cloud_hub.db import RetrainTrigger
from shared.schema import doc


@dataclass(frozen=True)
class RetrainConfig:
    """Retraining: triggers `serve` watches, how challengers are judged, what happens after a promotion."""

    enabled: bool = doc("Let `serve` retrain on the triggers below (the leader only). `cloud-hub retrain` "
                        "works either way.", default=False)
    groups: list[str] = doc("Device groups `serve` watches; empty = every group that has devices (\"\" = "
                            "devices without a group, judged against the fleet-default champion).",
                            default_factory=list)
    check_interval_s: float = doc("How often `serve` evaluates the triggers (seconds).", default=60.0)
    min_interval_s: float = doc("Least time between two retrains of one group, whatever triggers (seconds).",
                                default=3600.0)
    every_hours: float = doc("Schedule: retrain when the last retrain of the group is this old (0 = off).",
                             default=0.0)
    new_windows: int = doc("Retrain once this many new windows (rows / training window) were synced by the "
                           "group since its last retrain (0 = off).", default=0)
    drift_threshold: float = doc("Data drift: retrain when a feature's recent mean moved this many training "
                                 "standard deviations from the champion's training mean (0 = off).", default=0.0)
    drift_lookback_s: float = doc("Recent synced readings the drift check looks at (seconds).", default=3600.0)
    anomaly_rate_factor: float = doc("Anomaly-rate trigger: retrain when the group's anomaly events per hour in "
                                     "the last anomaly_rate_window_s exceed this many times the rate of the "
                                     "window before (0 = off).", default=0.0)
    anomaly_rate_window_s: float = doc("Window of the anomaly-rate trigger (seconds).", default=3600.0)
    anomaly_rate_min_per_hour: float = doc("The recent rate must also exceed this (events per hour), so one "
                                           "event after a quiet hour does not trigger.", default=5.0)
    since_s: float = doc("Train on readings synced in the last N seconds (0 = everything).", default=0.0)
    max_rows: int = doc("Train on at most the newest N readings left after exclusions (0 = all), as "
                        "`cloud-hub nab --retrain-max-rows` does (RetrainPolicy.newest).", default=0)
    holdout_fraction: float = doc("Most recent fraction of the synced time range held out to evaluate "
                                  "challenger and champion (never trained on).", default=0.2)
    margin: float = doc("Promote only if the challenger's evaluation cost is lower than the champion's by at "
                        "least this much (cost = false-alarm rate on held-out normal windows + fraction of "
                        "false-positive-labelled events still flagged + fraction of true-positive-labelled "
                        "events missed).", default=0.01)
    label_span_windows: float = doc("A labelled event covers this many windows either side of its timestamp "
                                    "(used to mark its stretch of readings).", default=1.0)
    calibrate_threshold: bool = doc("Raise the challenger's threshold above the scores of false-positive-"
                                    "labelled stretches when that keeps every true-positive-labelled event "
                                    "flagged.", default=True)
    model: str = doc("Detector to train; empty = the champion's.", default="")
    epochs: int = doc("Training epochs for challengers; 0 = [training] epochs.", default=0)
    rollout: bool = doc("Start a staged rollout of a promoted challenger to its group.", default=True)
    phases: list[int] = doc("Rollout waves as cumulative percentages of the group's devices.",
                            default_factory=lambda: [25, 100])
    quantization: str = doc("Bundle rolled out; empty = default_quantization.", default="")
    evaluate_bundles: bool = doc("Judge challenger and champion by their signed bundles of that quantization "
                                "(exported first if missing) through the agent's scoring path — what the devices "
                                "would run; false, or when a bundle cannot be made or run (no LiteRT, a model "
                                "that does not export): by the hub's float models, noted in the decision.",
                                default=True)

    def __post_init__(self) -> None:
        if not 0 < self.holdout_fraction < 0.9:
            raise ValueError("retrain.holdout_fraction must be in (0, 0.9)")
        if min(self.check_interval_s, self.drift_lookback_s, self.anomaly_rate_window_s) <= 0:
            raise ValueError("retrain intervals and windows must be > 0")
        if min(self.min_interval_s, self.every_hours, self.new_windows, self.drift_threshold,
               self.anomaly_rate_factor, self.since_s, self.epochs, self.label_span_windows, self.max_rows) < 0:
            raise ValueError("retrain settings must not be negative")
        if not self.phases or self.phases[-1] != 100 or self.phases != sorted(set(self.phases)) \
                or self.phases[0] <= 0:
            raise ValueError("retrain.phases: increasing percentages in (0, 100], the last one 100")


@dataclass(frozen=True)
class TriggerInputs:
    """What the trigger rule looks at, measured by the caller (NaN / 0 = not measured)."""

    now: float
    last_retrain_at: float | None  # the group's last retrain decision (None = never)
    new_windows: int = 0  # synced since last_retrain_at
    drift: float = math.nan  # largest standardised mean shift of a feature
    recent_anomaly_rate: float = 0.0  # events per hour, last window
    baseline_anomaly_rate: float = 0.0  # events per hour, the window before
    details: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Trigger:
    kind: RetrainTrigger
    detail: dict[str, float]


def due(cfg: RetrainConfig, x: TriggerInputs) -> Trigger | None:
    """The first trigger that fires (schedule, new data, data drift, anomaly rate), or None; nothing fires
    within ``min_interval_s`` of the last retrain."""
    from cloud_hub.retrain_policy import RetrainPolicy  # imports cloud_hub.config, which imports this module

    since_last = math.inf if x.last_retrain_at is None else x.now - x.last_retrain_at
    if since_last < cfg.min_interval_s:
        return None
    detail = {"since_last_s": since_last if math.isfinite(since_last) else -1.0, **x.details}
    if cfg.every_hours and since_last >= cfg.every_hours * 3600:
        return Trigger(RetrainTrigger.SCHEDULE, {**detail, "every_hours": cfg.every_hours})
    if RetrainPolicy(every=cfg.new_windows).due(x.new_windows):  # the rule `cloud-hub nab --retrain-every` uses
        return Trigger(RetrainTrigger.NEW_DATA, {**detail, "new_windows": float(x.new_windows),
                                                 "threshold": float(cfg.new_windows)})
    if cfg.drift_threshold and math.isfinite(x.drift) and x.drift >= cfg.drift_threshold:
        return Trigger(RetrainTrigger.DATA_DRIFT, {**detail, "drift": x.drift, "threshold": cfg.drift_threshold})
    if cfg.anomaly_rate_factor and x.recent_anomaly_rate >= cfg.anomaly_rate_min_per_hour \
            and x.recent_anomaly_rate > cfg.anomaly_rate_factor * x.baseline_anomaly_rate:
        return Trigger(RetrainTrigger.ANOMALY_RATE, {**detail, "recent_per_hour": x.recent_anomaly_rate,
                                                     "baseline_per_hour": x.baseline_anomaly_rate,
                                                     "factor": cfg.anomaly_rate_factor})
    return None


@dataclass(frozen=True)
class Verdict:
    promote: bool
    reason: str
    improvement: float


def judge(champion_cost: float | None, challenger_cost: float, champion_recall: float | None,
          challenger_recall: float | None, margin: float) -> Verdict:
    """Promote the challenger only if its cost is lower by ``margin`` and it catches at least every
    true-positive-labelled event the champion catches.  Without a champion it wins by default."""
    if champion_cost is None:
        return Verdict(True, "no champion to beat", math.inf)
    improvement = champion_cost - challenger_cost
    if champion_recall is not None and challenger_recall is not None and challenger_recall < champion_recall:
        return Verdict(False, f"challenger misses labelled anomalies the champion catches (recall "
                              f"{challenger_recall:.3f} < {champion_recall:.3f})", improvement)
    if improvement >= margin:
        return Verdict(True, f"cost {challenger_cost:.4f} vs champion {champion_cost:.4f}: better by "
                             f"{improvement:.4f} >= margin {margin}", improvement)
    return Verdict(False, f"cost {challenger_cost:.4f} vs champion {champion_cost:.4f}: better by "
                          f"{improvement:.4f} < margin {margin}", improvement)
