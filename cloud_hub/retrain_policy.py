"""Learning from the streamed past: when the hub retrains and on which readings.

One policy for every caller — ``cloud-hub nab --retrain-every N`` (per file, as a stream) and the hub's
retrain triggers on synced data — so the benchmark measures the loop the product runs:
every ``every`` new readings, train on the newest ``max_rows`` readings seen so far, minus the rows the
running model flagged (± one window, :func:`cloud_hub.data.near_flags`), export → sign, and let the
agent swap the new bundle in (its likelihood re-primed from the new model's calibration while the
stream's own state carries over, ``AnomalyLikelihood.continued``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from cloud_hub.config import TrainingConfig
from cloud_hub.data import TrainingData, near_flags, unflagged_segments
from shared.decision import DecisionMode
from shared.inference import Quantization
from shared.schema import doc

if TYPE_CHECKING:
    from cloud_hub.export import ExportResult
    from cloud_hub.home import HubHome


@dataclass(frozen=True)
class RetrainPolicy:
    """When to retrain on streamed data and on how much of it."""

    every: int = doc("Retrain after this many new readings (0 = never: keep the first model).", default=0)
    max_rows: int = doc("Train on at most the newest N readings streamed so far.", default=4000)
    exclude_flagged: bool = doc("Leave out readings the running model flagged, with one window either side.",
                                default=True)

    def __post_init__(self) -> None:
        if self.every < 0 or self.max_rows < 2:
            raise ValueError("every >= 0 (0 = never) and max_rows >= 2")

    def due(self, new_readings: int) -> bool:
        """True when ``new_readings`` arrived since the last training warrant a retrain."""
        return self.every > 0 and new_readings >= self.every

    def points(self, first: int, n: int) -> list[int]:
        """Stream positions (readings seen) at which a stream of ``n`` readings whose first model was
        trained on ``first`` readings is retrained."""
        return list(range(first + self.every, n, self.every)) if self.every > 0 else []

    def newest(self, data: TrainingData) -> TrainingData:
        """``data`` cut to its newest ``max_rows`` readings (segments are in time order)."""
        kept: list[np.ndarray] = []
        budget = self.max_rows
        for seg in reversed(data.segments):
            if budget <= 0:
                break
            kept.append(seg[-budget:])
            budget -= len(kept[-1])
        kept.reverse()
        return replace(data, segments=kept, rows=sum(len(s) for s in kept))

    def stream_data(self, features: list[str], values: np.ndarray, flags: np.ndarray, window: int,
                    source: str) -> TrainingData:
        """Training data from one contiguous stream seen so far (``values`` (n, f) in time order and the
        agent's flags (n,)): flagged rows ± ``window`` left out, then the newest ``max_rows``."""
        start = max(0, len(values) - 2 * self.max_rows)  # enough rows to fill max_rows after exclusions
        vals, fl = values[start:], np.asarray(flags[start:], bool)
        bad = near_flags(fl, window) if self.exclude_flagged else np.zeros(len(fl), bool)
        segments = [s for s in unflagged_segments(vals, bad) if len(s) > window]
        data = TrainingData(features, segments, source, len(vals), int(bad.sum()))
        return self.newest(data)


def retrain(home: HubHome, data: TrainingData, cfg: TrainingConfig, model: str, quantization: Quantization,
            decide_on: DecisionMode = DecisionMode.SCORE, likelihood_threshold: float = 0.5,
            **likelihood: Any) -> ExportResult:
    """Train a new version on ``data`` and export a signed bundle: the step both NAB's loop and the hub's
    retrain triggers run (rollout is the caller's business)."""
    from cloud_hub import training
    from cloud_hub.export import export

    result = training.train(home, data, cfg, model=model)
    return export(home, result.version, quantization, decide_on, likelihood_threshold, **likelihood)
