"""``cloud-hub evaluate``: train on a stratified split of a labelled table, score the held-out rows.

Unsupervised models see only the normal training rows.  Metrics are computed for the trained model
and, when it exports, for its int8 TFLite form through the edge's interpreter and scoring (the
quantization delta).  Everything lands in ``out``: metrics.json, scores.csv, report.md, PNG plots.
"""

from __future__ import annotations

import enum
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from cloud_hub.config import TrainingConfig
from cloud_hub.evaluation.pointwise import pointwise
from cloud_hub.evaluation.report import roc_pr_plots, score_timeline, table
from cloud_hub.models import Detector, create
from cloud_hub.training import check_mode
from shared.decision import Decision, DecisionMode
from shared.tabular import Table, apply_tabular, fit_tabular, read_table

log = logging.getLogger(__name__)
BATCH = 256
METRIC_KEYS = ["accuracy", "precision", "recall", "f1", "balanced_accuracy", "roc_auc", "pr_auc", "fp", "fn"]


def ms_per_batch(score: Any, x: np.ndarray, batch: int = BATCH, repeats: int = 3) -> float:
    """Median wall time to score one batch of ``batch`` samples (after a warm-up call)."""
    chunk = x[:batch] if len(x) >= batch else np.resize(x, (batch, *x.shape[1:]))
    score(chunk)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        score(chunk)
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times))


def labels_of(data: Table) -> np.ndarray:
    if data.y is None:
        raise ValueError("evaluation needs labelled data: the table has no label column")
    return data.y


class ScoreOn(enum.StrEnum):
    """Which held-out rows ``evaluate`` reports on."""

    TEST = "test"  # the stratified test split: report a chosen configuration once
    VALIDATION = "validation"  # a stratified part of the training rows: compare configurations; test rows unused


def split(y: np.ndarray, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    train, test = train_test_split(idx, test_size=test_size, random_state=seed, stratify=y)
    return np.sort(train), np.sort(test)


SEMI_ATTACKS = 50  # labelled attacks an operator might have at hand to place an unsupervised threshold
SEMI_FRACTION = 0.2  # of the training rows held out (never trained on) for that threshold


def semi_split(y_train: np.ndarray, seed: int, attacks: int = SEMI_ATTACKS) -> tuple[np.ndarray, np.ndarray]:
    """Positions in the training rows: (kept for training, validation for a semi-supervised threshold).
    The validation part is a stratified ``SEMI_FRACTION`` of them with at most ``attacks`` attacks kept —
    a few labelled attacks, not a labelled data set; the attacks it drops are not trained on either."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y_train))
    fit_idx, val_idx = train_test_split(idx, test_size=SEMI_FRACTION, random_state=seed, stratify=y_train)
    bad = val_idx[y_train[val_idx] > 0]
    drop = np.random.default_rng(seed).permutation(bad)[attacks:]
    return np.sort(fit_idx), np.sort(np.setdiff1d(val_idx, drop))


def fit_score(model: str, cfg: TrainingConfig, data: Table, train: np.ndarray, test: np.ndarray,
              quantization: str | None = "int8") -> dict[str, Any]:
    """Train on ``train`` rows, score ``test`` rows; int8 metrics too when the model exports.

    An unsupervised model is reported twice on the same test rows: with its normal-only threshold and
    with a *semi-supervised* one — the F1-best threshold on a validation part of the training rows
    holding at most ``SEMI_ATTACKS`` labelled attacks (the model never trains on that part)."""
    from cloud_hub.export import Quantization, exported
    from cloud_hub.models import Mode
    from cloud_hub.models.base import best_f1_threshold

    y = labels_of(data)
    mode = check_mode(model, labelled=True)
    semi_val = None
    if mode == Mode.UNSUPERVISED:
        keep, semi_pos = semi_split(y[train], cfg.seed)
        semi_val, train = train[semi_pos], train[keep]
    params = fit_tabular(data.x[train], data.features)
    x_train, x_test = apply_tabular(data.x[train], params), apply_tabular(data.x[test], params)
    y_train, y_test = y[train], y[test]
    det: Detector = create(model, cfg, mode)
    t0 = time.perf_counter()
    report = det.fit(x_train, y_train)
    train_s = time.perf_counter() - t0
    scores = det.score(x_test)
    result: dict[str, Any] = {
        "model": model, "mode": mode.value, "threshold": det.threshold, "train_seconds": round(train_s, 2),
        "train_samples": report.train_samples, "epochs": report.epochs,
        **pointwise(y_test, scores, det.decision.flags(scores)),
        "ms_per_batch": ms_per_batch(det.score, x_test), "batch": BATCH,
        "scores": scores, "y_test": y_test,
    }
    if semi_val is not None:
        x_semi, y_semi = apply_tabular(data.x[semi_val], params), y[semi_val]
        threshold = best_f1_threshold(det.score(x_semi), y_semi)
        result["semi_supervised"] = {**pointwise(y_test, scores, Decision(DecisionMode.SCORE, threshold).flags(scores)),
                                     "threshold": threshold, "validation_rows": len(semi_val),
                                     "labelled_attacks": int((y_semi > 0).sum())}
    if quantization and quantization in det.quantizations:
        tflite, ex, agree = exported(det, Quantization(quantization))
        t_scores = det.tflite_scores(tflite, x_test, ex.scoring)
        q = pointwise(y_test, t_scores, Decision(DecisionMode.SCORE, ex.threshold).flags(t_scores))
        result[quantization] = {**q, "threshold": ex.threshold, "tflite_bytes": len(tflite),
                                "agreement": asdict(agree),
                                "ms_per_batch": ms_per_batch(lambda a: det.tflite_scores(tflite, a, ex.scoring), x_test)}
        result["quantization_f1_delta"] = q["f1"] - result["f1"]
        result["scores_" + quantization] = t_scores
    elif quantization:
        result[quantization] = None
        result["export_note"] = det.export_note or f"{model} does not export as {quantization}"
    return result


def cross_validate(model: str, cfg: TrainingConfig, data: Table, folds: int, seed: int) -> dict[str, Any]:
    from sklearn.model_selection import StratifiedKFold

    per_fold = []
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(data.x, labels_of(data)):
        r = fit_score(model, cfg, data, train, test, quantization=None)
        per_fold.append({k: r[k] for k in METRIC_KEYS})
    summary = {k: {"mean": float(np.mean([f[k] for f in per_fold])), "std": float(np.std([f[k] for f in per_fold]))}
               for k in METRIC_KEYS if all(f[k] is not None for f in per_fold)}
    return {"folds": folds, "per_fold": per_fold, "summary": summary}


def evaluate(model: str, data_path: Path, out: Path, cfg: TrainingConfig, label_column: str = "label",
             test_size: float = 0.3, seed: int = 0, folds: int = 0, quantization: str | None = "int8",
             plots: bool = True, score_on: ScoreOn = ScoreOn.TEST) -> dict[str, Any]:
    """Train on the training split and report on the test split — or, with ``score_on=validation``, train
    on part of the training split and report on the rest of it, so configurations are compared without
    ever scoring the test rows (they are split off first, with the same seed, and not used)."""
    if not 0 < test_size < 1:
        raise ValueError("--test-size must be in (0, 1)")
    data = read_table(data_path, label_column)
    y = labels_of(data)
    if len(np.unique(y)) < 2:
        raise ValueError(f"{data_path}: the label column holds a single class")
    out.mkdir(parents=True, exist_ok=True)
    train, test = split(y, test_size, seed)
    if score_on == ScoreOn.VALIDATION:
        fit_pos, val_pos = split(y[train], test_size, seed)
        train, test = train[fit_pos], train[val_pos]
    r = fit_score(model, cfg, data, train, test, quantization)
    scores, y_test = r.pop("scores"), r.pop("y_test")
    q_scores = r.pop("scores_" + quantization, None) if quantization else None
    metrics = {**r, "dataset": str(data_path), "rows": len(y), "test_rows": len(test), "test_size": test_size,
               "seed": seed, "features": len(data.features), "scored_on": score_on.value}
    if folds > 1:
        metrics["cross_validation"] = cross_validate(model, cfg, data, folds, seed)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    flags = Decision(DecisionMode.SCORE, r["threshold"]).flags(scores)
    with open(out / "scores.csv", "w") as fh:
        fh.write("row,label,score,flag" + (f",score_{quantization}" if q_scores is not None else "") + "\n")
        for i, row in enumerate(test):
            extra = f",{q_scores[i]:.6g}" if q_scores is not None else ""
            fh.write(f"{row},{y_test[i]},{scores[i]:.6g},{int(flags[i])}{extra}\n")
    if plots:
        curves = {model: ((y_test > 0).astype(int), scores)}
        if q_scores is not None:
            curves[f"{model} ({quantization})"] = ((y_test > 0).astype(int), q_scores)
        roc_pr_plots(curves, out, f"{model} on {data_path.name}")
        score_timeline(scores, r["threshold"], out, f"{model}: held-out scores (attacks shaded)", labels=y_test)
    write_report(metrics, out, quantization)
    return metrics


def write_report(m: dict[str, Any], out: Path, quantization: str | None) -> None:
    rows = [{"variant": "trained model", **m}]
    if m.get("semi_supervised"):
        semi = m["semi_supervised"]
        rows.append({"variant": f"semi-supervised threshold ({semi['labelled_attacks']} labelled attacks)", **semi})
    if quantization and m.get(quantization):
        rows.append({"variant": f"TFLite {quantization}", **m[quantization]})
    lines = [
        f"# {m['model']} on {Path(m['dataset']).name}",
        "",
        f"{m['mode']} · {m['rows']} rows, {m['features']} features · stratified test split {m['test_size']} "
        f"(seed {m['seed']}) · scored on the {m.get('scored_on', 'test')} rows: {m['test_rows']} · "
        f"trained in {m['train_seconds']} s ({m['epochs']} epochs)",
        "",
        table(rows, ["variant", *METRIC_KEYS, "ms_per_batch"]),
        "",
        f"Threshold learned on validation data: {m['threshold']:.6g}. `ms_per_batch`: median time to score "
        f"{m['batch']} rows.",
    ]
    if "quantization_f1_delta" in m:
        lines += ["", f"Quantization F1 delta ({quantization} − trained): {m['quantization_f1_delta']:+.4f}"]
    elif m.get("export_note"):
        lines += ["", f"No TFLite export: {m['export_note']}"]
    if "cross_validation" in m:
        cv = m["cross_validation"]
        lines += ["", f"## {cv['folds']}-fold cross-validation", "",
                  table([{"metric": k, **v} for k, v in cv["summary"].items()], ["metric", "mean", "std"])]
    lines += ["", "![ROC](roc.png) ![PR](pr.png)", "", "![scores](timeline.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
