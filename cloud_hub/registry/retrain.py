"""The retrain loop for one device group: train a challenger on the group's synced data, judge it against
the champion on the same held-out recent data plus operator labels, promote it only if it is better by
the configured margin, then hand it to a rollout.  Every run is stored as a decision with its numbers.

Data: readings before the held-out cut; rows the agents flagged are dropped with a window either side,
except inside stretches an operator labelled false positive (those become normal training data), and
true-positive stretches are always dropped.  Labels also calibrate the challenger's threshold
(:func:`cloud_hub.registry.evaluate.label_threshold`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from cloud_hub import db
from cloud_hub.config import TrainingConfig
from cloud_hub.data import from_synced, synced_rows
from cloud_hub.home import HubHome
from cloud_hub.models import EpochCallback, ModelError
from cloud_hub.registry import champion as reg_champion
from cloud_hub.registry import evaluate, lineage
from cloud_hub.registry.policy import RetrainConfig, judge
from cloud_hub.retrain_policy import RetrainPolicy
from shared.preprocessing import PreprocessParams

if TYPE_CHECKING:
    from shared.bundle import Bundle

log = logging.getLogger(__name__)


class RetrainError(RuntimeError):
    """A retrain that could not run (no data, unknown group...); stored as a FAILED decision."""


@dataclass
class RetrainRequest:
    group: str = ""  # "" = the whole fleet, judged against the fleet-default champion
    trigger: db.RetrainTrigger = db.RetrainTrigger.MANUAL
    trigger_detail: dict[str, Any] = field(default_factory=dict)
    force: bool = False  # promote whatever the evaluation says (the numbers are still stored)
    model: str | None = None  # default: [retrain] model, else the champion's, else ae-lstm
    since: float | None = None  # only readings at or after this timestamp
    quantization: str = ""  # the bundles judged (and rolled out): default [retrain] quantization, else the hub's


@dataclass
class RetrainResult:
    decision: db.RetrainDecision
    challenger: int | None
    champion: int | None
    promoted: bool


def group_devices(home: HubHome, group: str) -> list[str] | None:
    """The devices whose synced data trains ``group``'s challenger (None = every device)."""
    if not group:
        return None
    with home.sessions()() as s:
        devices = list(s.scalars(select(db.Device.device_id).where(db.Device.group == group)
                                 .order_by(db.Device.device_id)))
    if not devices:
        raise RetrainError(f"no device in group {group!r} (see `cloud-hub devices list`)")
    return devices


def _store(home: HubHome, d: db.RetrainDecision) -> db.RetrainDecision:
    with home.sessions()() as s:
        s.add(d)
        s.commit()
    return d


def retrain(home: HubHome, req: RetrainRequest, training_cfg: TrainingConfig | None = None,
            policy: RetrainConfig | None = None, on_epoch: EpochCallback | None = None,
            on_promoted: Callable[[int, str], int | None] | None = None) -> RetrainResult:
    """Run one retrain of ``req.group``; returns the stored decision.

    ``on_promoted(version, group)`` starts the rollout of a promoted challenger and returns its rollout id
    (called only when ``policy.rollout``); it is stored with the decision.
    """
    cfg = home.config()
    policy = policy or cfg.retrain
    tcfg = training_cfg or cfg.training
    if policy.epochs and training_cfg is None:
        tcfg = replace(tcfg, epochs=policy.epochs)
    started = time.time()
    decision = db.RetrainDecision(device_group=req.group, trigger=req.trigger, trigger_detail=req.trigger_detail,
                                  started_at=started, margin=policy.margin, numbers={})
    champ: reg_champion.CurrentChampion | None = None
    try:
        with home.sessions()() as s:
            champ = reg_champion.champion(s, req.group)
            decision.champion_version = champ.version if champ else None
            model = req.model or policy.model or (s.get(db.ModelVersion, champ.version).name  # type: ignore[union-attr]
                                                  if champ else "ae-lstm")
        devices = group_devices(home, req.group)
        since = req.since if req.since is not None else (time.time() - policy.since_s if policy.since_s else None)
        quantization = req.quantization or policy.quantization or cfg.default_quantization
        result = _challenge(home, req, devices, since, model, tcfg, policy, champ, on_epoch, quantization)
    except (ValueError, ModelError, RetrainError, OSError) as exc:
        decision.outcome, decision.finished_at = db.RetrainOutcome.FAILED, time.time()
        decision.detail = str(exc)[:1000]
        _store(home, decision)
        raise RetrainError(str(exc)) from exc
    decision.challenger_version = result["challenger"]
    decision.numbers = result["numbers"]
    promote = req.force or result["verdict"].promote
    decision.detail = ("forced promotion; " if req.force and not result["verdict"].promote else "") + \
        result["verdict"].reason
    decision.outcome = db.RetrainOutcome.PROMOTED if promote else db.RetrainOutcome.KEPT_CHAMPION
    with home.sessions()() as s:
        lineage.add_metrics(s, result["challenger"], "evaluation", result["numbers"])
        if promote:
            reg_champion.set_champion(s, result["challenger"], req.group,
                                      f"retrain ({req.trigger.value}): {decision.detail}")
        s.commit()
    if promote and policy.rollout and on_promoted is not None:
        try:
            decision.rollout_id = on_promoted(result["challenger"], req.group)
        except (ValueError, LookupError, OSError, ConnectionError) as exc:
            decision.detail = f"{decision.detail}; rollout not started: {exc}"[:1000]
    decision.finished_at = time.time()
    _store(home, decision)
    return RetrainResult(decision, result["challenger"], decision.champion_version, promote)


def _challenge(home: HubHome, req: RetrainRequest, devices: list[str] | None, since: float | None, model: str,
               tcfg: TrainingConfig, policy: RetrainConfig, champ: reg_champion.CurrentChampion | None,
               on_epoch: EpochCallback | None, quantization: str) -> dict[str, Any]:
    from cloud_hub import training

    with home.sessions()() as s:
        features, rows = synced_rows(s, None, since, None, devices)
        cut = evaluate.holdout_cut(rows, policy.holdout_fraction)
        spans = evaluate.label_spans(s, rows, tcfg.window, policy.label_span_windows, devices)
        data = from_synced(s, features, since, tcfg.window, devices, until=cut,
                           normal_spans=spans.by_device(db.LabelKind.FALSE_POSITIVE),
                           excluded_spans=spans.by_device(db.LabelKind.TRUE_POSITIVE))
    if policy.max_rows:
        data = RetrainPolicy(max_rows=policy.max_rows).newest(data)
    data.source = f"synced:{req.group or 'fleet'}"
    es = evaluate.EvalSet(features, rows, cut, spans, tcfg.window)
    log.info("retrain %s: %d readings before the held-out cut, %d excluded, %d FP / %d TP labelled events",
             req.group or "fleet", data.rows, data.excluded_rows, len(spans.fp), len(spans.tp))
    trained = training.train(home, data, tcfg, model=model, on_epoch=on_epoch,
                             parent=champ.version if champ else None, group=req.group)
    challenger = trained.version
    scored = evaluate.score_versions(es, trained.preprocessing, trained.detector)
    calibration: dict[str, Any] = {"threshold_learned": trained.detector.threshold}
    if policy.calibrate_threshold and len(scored.fp_scores):
        lifted = evaluate.label_threshold(trained.detector.threshold, scored.fp_scores, scored.tp_event_max)
        if lifted > trained.detector.threshold:
            evaluate.with_threshold(trained.detector, lifted)
            trained.detector.save(trained.artifacts)
            meta_path = trained.artifacts / "meta.json"
            meta = json.loads(meta_path.read_text())
            meta["training"]["threshold"] = lifted
            meta["training"]["label_calibration"] = calibration | {"threshold": lifted}
            meta_path.write_text(json.dumps(meta, indent=2))
            scored = evaluate.score_versions(es, trained.preprocessing, trained.detector)
        calibration["threshold"] = lifted
    challenger_m = evaluate.metrics(scored, trained.detector.threshold)
    champion_m: dict[str, Any] | None = None
    champion_note = ""
    if champ is not None:
        try:
            meta, det = training.load_version(home, champ.version)
            champion_m = evaluate.metrics(
                evaluate.score_versions(es, PreprocessParams.from_dict(meta["preprocessing"]), det), det.threshold)
        except (ValueError, ModelError, OSError) as exc:
            champion_note = f"champion v{champ.version} cannot score this data ({exc}); "
    float_numbers = {"challenger": challenger_m, "champion": champion_m}
    scored_with = "float models"
    if policy.evaluate_bundles:
        try:
            # a champion that cannot score this data at all (champion_note) stays out
            challenger_m, champion_m = _bundle_metrics(home, es, challenger, champ if champion_m else None,
                                                       quantization)
            scored_with = f"{quantization} bundles"
        except BundleUnavailable as exc:
            scored_with = f"float models ({quantization} bundles unavailable: {exc})"
            log.warning("retrain %s: judged by the %s", req.group or "fleet", scored_with)
    verdict = judge(champion_m["cost"] if champion_m else None, challenger_m["cost"],
                    champion_m["tp_recall"] if champion_m else None, challenger_m["tp_recall"], policy.margin)
    verdict = replace(verdict, reason=f"{champion_note}judged by the {scored_with}: {verdict.reason}")
    numbers = {"challenger": challenger_m, "champion": champion_m, "scored_with": scored_with,
               "float_models": float_numbers,
               "champion_source": champ.source.value if champ else None,
               "improvement": verdict.improvement if verdict.improvement != float("inf") else None,
               "holdout_cut": cut, "holdout_fraction": policy.holdout_fraction,
               "training": {"rows": data.rows, "excluded_rows": data.excluded_rows, "fp_rows": data.fp_rows,
                            "devices": data.devices, "start_ts": data.start_ts, "end_ts": data.end_ts},
               "labels": {"fp_events": len(spans.fp), "tp_events": len(spans.tp)},
               "label_calibration": calibration}
    return {"challenger": challenger, "numbers": numbers, "verdict": verdict}


class BundleUnavailable(RuntimeError):
    """A version's bundle cannot be exported, loaded or run here (the evaluation falls back to float models)."""


def _bundle_metrics(home: HubHome, es: evaluate.EvalSet, challenger: int, champ: reg_champion.CurrentChampion | None,
                    quantization: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Challenger's and champion's metrics from their signed bundles through the agent's scoring path;
    BundleUnavailable if either cannot be exported, loaded or run here (both are then judged by floats)."""
    from cloud_hub.export import NotExportable
    from shared import bundle as bundle_fmt
    from shared.inference import RuntimeUnavailable

    out: list[dict[str, Any] | None] = []
    for version in (challenger, champ.version if champ else None):
        if version is None:
            out.append(None)
            continue
        try:
            bundle = _bundle(home, version, quantization)
            out.append(evaluate.metrics(evaluate.score_bundle(es, bundle), bundle.manifest.decision.score_threshold))
        except (NotExportable, RuntimeUnavailable, bundle_fmt.BundleError, ModelError, OSError, ValueError) as exc:
            raise BundleUnavailable(f"v{version}: {exc}") from exc
    assert out[0] is not None
    return out[0], out[1]


def _bundle(home: HubHome, version: int, quantization: str) -> Bundle:
    """The version's signed bundle, exported first if it has none (a rollout of it then reuses it)."""
    from cloud_hub.export import export
    from shared import bundle as bundle_fmt
    from shared.inference import Quantization
    from shared.signing import parse_public_key

    with home.sessions()() as s:
        row = s.scalar(select(db.Bundle).where(db.Bundle.version == version, db.Bundle.quantization == quantization))
        path = row.path if row is not None else None
    if path is None or not Path(path).is_file():
        log.info("exporting v%d (%s) to judge the bundle the devices would run", version, quantization)
        path = str(export(home, version, Quantization(quantization)).archive)
    return bundle_fmt.load_archive(Path(path).read_bytes(), [parse_public_key(home.public_key())])


def roll_out(home: HubHome, version: int, group: str, quantization: str, phases: list[int]) -> int:
    """Start a staged rollout of ``version`` to ``group``'s devices (every device for the fleet), exporting
    the bundle first if it does not exist; `serve` carries the waves out.  Returns the rollout id."""
    from cloud_hub.export import export
    from cloud_hub.rollout import Selector, start_rollout
    from shared.inference import Quantization

    selector = Selector(group=group or None)
    try:
        return start_rollout(home, version, selector, phases, quantization=quantization)
    except LookupError:
        export(home, version, Quantization(quantization))
        return start_rollout(home, version, selector, phases, quantization=quantization)


def history(home: HubHome, group: str | None = None, limit: int = 50) -> list[db.RetrainDecision]:
    """Retrain decisions (and manual promotions), newest first."""
    query = select(db.RetrainDecision).order_by(db.RetrainDecision.id.desc()).limit(limit)
    if group is not None:
        query = query.where(db.RetrainDecision.device_group == group)
    with home.sessions()() as s:
        return list(s.scalars(query))
