"""Markdown reports and PNG plots (ROC / PR curves, score timelines)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def roc_pr_plots(curves: dict[str, tuple[np.ndarray, np.ndarray]], out: Path, title: str) -> list[Path]:
    """ROC and PR curves, one line per model: ``curves[name] = (binary labels, scores)``."""
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    plt = _pyplot()
    paths = []
    for kind in ("roc", "pr"):
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        ax.set_prop_cycle(color=[plt.cm.tab20(i / 20) for i in range(0, 20, 2)] + ["black", "tab:olive"],
                          linestyle=["-", "--", "-.", ":"] * 3)
        for name, (y, s) in curves.items():
            s = np.nan_to_num(s, nan=0.0, posinf=1e300, neginf=-1e300)
            if kind == "roc":
                fpr, tpr, _ = roc_curve(y, s)
                ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, s):.3f})")
            else:
                p, r, _ = precision_recall_curve(y, s)
                ax.plot(r, p, label=f"{name} (AP {average_precision_score(y, s):.3f})")
        ax.set_xlabel("false positive rate" if kind == "roc" else "recall")
        ax.set_ylabel("true positive rate" if kind == "roc" else "precision")
        ax.set_title(f"{'ROC' if kind == 'roc' else 'Precision-recall'}: {title}")
        ax.legend(fontsize=7, loc="lower right" if kind == "roc" else "lower left")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out / f"{kind}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def score_timeline(scores: np.ndarray, threshold: float, out: Path, title: str, labels: np.ndarray | None = None,
                   windows: Sequence[tuple[int, int]] = (), values: np.ndarray | None = None,
                   ylabel: str = "anomaly score") -> Path:
    """Scores in order with the threshold, labelled anomalies shaded; raw values above when given."""
    plt = _pyplot()
    rows = 2 if values is not None else 1
    fig, axes = plt.subplots(rows, 1, figsize=(10, 2.6 * rows), sharex=True, squeeze=False)
    t = np.arange(len(scores))
    shade = list(windows)
    if labels is not None and not shade:
        pos = np.flatnonzero(np.asarray(labels) > 0)
        shade = [(int(i), int(i) + 1) for i in pos]
    for ax in axes[:, 0]:
        for a, b in shade:
            ax.axvspan(a, b, color="tab:red", alpha=0.15, lw=0)
    if values is not None:
        axes[0, 0].plot(t, values, lw=0.6, color="tab:gray")
        axes[0, 0].set_ylabel("value")
    ax = axes[-1, 0]
    ax.plot(t, np.nan_to_num(scores, nan=0.0), lw=0.6, label="score")
    ax.axhline(threshold, color="tab:red", ls="--", lw=0.8, label=f"threshold {threshold:.3g}")
    ax.set_ylabel(ylabel)
    ax.set_xlabel("sample")
    ax.legend(fontsize=7, loc="upper right")
    axes[0, 0].set_title(title)
    fig.tight_layout()
    path = out / "timeline.png" if out.is_dir() else out
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def table(rows: list[dict[str, Any]], columns: list[str], headers: list[str] | None = None) -> str:
    head = headers or columns
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
