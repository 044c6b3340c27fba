"""Several models on one dataset, side by side: one table, one ROC and one PR plot for all."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cloud_hub.evaluation.report import roc_pr_plots, table

COLUMNS = ["model", "mode", "accuracy", "precision", "recall", "f1", "balanced_accuracy", "roc_auc", "pr_auc", "fp",
           "fn", "f1_semi", "ms_per_batch", "f1_int8", "quantization_f1_delta", "train_seconds"]


def compare(models: list[str], out: Path, run_one: Callable[[str, Path], dict[str, Any]],
            title: str) -> list[dict[str, Any]]:
    """Run ``run_one(model, out/model)`` for each model; write out/summary.json, summary.md, roc/pr."""
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in models:
        m = run_one(name, out / name)
        q = m.get("int8") or {}
        semi = m.get("semi_supervised") or {}  # unsupervised models: threshold placed with a few attacks
        rows.append({**{k: m.get(k) for k in COLUMNS}, "f1_int8": q.get("f1"), "f1_semi": semi.get("f1")})
        scores = np.loadtxt(out / name / "scores.csv", delimiter=",", skiprows=1, usecols=(1, 2), ndmin=2)
        curves[name] = ((scores[:, 0] > 0).astype(int), scores[:, 1])
    (out / "summary.json").write_text(json.dumps(rows, indent=2))
    roc_pr_plots(curves, out, title)
    headers = ["model", "mode", "acc", "prec", "recall", "F1", "bal. acc", "ROC-AUC", "PR-AUC", "FP", "FN",
               "F1 semi-sup.", "ms/batch", "F1 int8", "Δ int8", "train s"]
    (out / "summary.md").write_text(f"# {title}\n\n{table(rows, COLUMNS, headers)}\n\n![ROC](roc.png) ![PR](pr.png)\n")
    return rows
