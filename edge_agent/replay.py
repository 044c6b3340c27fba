"""Offline replay: a signed bundle scores a CSV through exactly the agent's streaming code.

Used by operators to try a model on recorded data, and by the hub's NAB benchmark so the published
figures are those of the exported, quantised model running the edge path (preprocessing ring buffer,
TFLite interpreter, scoring, streaming likelihood, decision) — not of Keras.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_agent.detector import ActiveModel, StreamingDetector
from shared.bundle import Bundle, load_archive, load_dir
from shared.csvdata import Series, read_series
from shared.inference import Runtime
from shared.readings import ReadingsBlock
from shared.scoring import attribution
from shared.signing import parse_public_key

CHUNK = 1024  # readings pushed per call (well under the detector's limit)


@dataclass
class ReplayResult:
    timestamps: np.ndarray  # (n,)
    values: np.ndarray  # (n, f) raw readings
    features: list[str]
    score: np.ndarray  # (n,) raw score; NaN until the first window is complete
    likelihood: np.ndarray  # (n,) streaming likelihood in [0, 1]; 0 until the first window
    anomalous: np.ndarray  # (n,) bool: the agent's own decision
    top_feature: list[str]


def load_bundle(path: Path, trusted_keys: list[str]) -> Bundle:
    keys = [parse_public_key(k) for k in trusted_keys]
    if not keys:
        raise ValueError("no trusted keys: pass --trusted-key (the hub's public key) or --config agent.toml")
    return load_dir(path, keys) if path.is_dir() else load_archive(path.read_bytes(), keys)


class Replayer:
    """An agent's detector fed from recorded data, chunk by chunk; ``swap`` installs a new bundle mid-stream
    exactly as the agent does when an update activates (the ring buffer carries over, and the likelihood
    continues from the previous model's stream state: see ``StreamingDetector.swap``)."""

    def __init__(self, bundle: Bundle, series: Series, runtime: Runtime = Runtime.AUTO) -> None:
        self.runtime = runtime
        self.detector = StreamingDetector()
        model = self._model(bundle)
        self.features = model.preprocessing.features
        missing = [f for f in self.features if f not in series.features]
        if missing:
            raise ValueError(f"the data lacks the model's features {missing} (it has {series.features})")
        self.series = series
        self.values = series.values[:, [series.features.index(f) for f in self.features]]
        n = len(self.values)
        self.score = np.full(n, np.nan)
        self.likelihood = np.zeros(n)
        self.anomalous = np.zeros(n, dtype=bool)
        self.top = [""] * n
        self.position = 0  # readings pushed so far
        self._index = {float(t): i for i, t in enumerate(series.timestamps)}
        self.detector.swap(model)

    def _model(self, bundle: Bundle) -> ActiveModel:
        return ActiveModel.from_bundle(bundle, self.runtime)

    def swap(self, bundle: Bundle) -> None:
        model = self._model(bundle)
        if model.preprocessing.features != self.features:
            raise ValueError("a swapped-in model must read the same features")
        self.detector.swap(model)

    def advance(self, until: int) -> None:
        """Push readings [position, until) in time order."""
        until = min(until, len(self.values))
        for start in range(self.position, until, CHUNK):
            stop = min(start + CHUNK, until)
            block = ReadingsBlock(self.series.timestamps[start:stop], tuple(self.features), self.values[start:stop])
            scored = self.detector.push_block(block).scored
            if scored is None:
                continue
            rows = np.array([self._index[t] for t in scored.ts.tolist()], dtype=np.intp)
            self.score[rows], self.likelihood[rows], self.anomalous[rows] = (scored.scores, scored.likelihood,
                                                                             scored.anomalous)
            for i, row in enumerate(rows.tolist()):
                self.top[row] = next(iter(attribution(scored.contributions[i], self.features, 1)), "")
        self.position = max(self.position, until)

    def result(self) -> ReplayResult:
        return ReplayResult(self.series.timestamps, self.values, self.features, self.score, self.likelihood,
                            self.anomalous, self.top)


def replay(bundle: Bundle, series: Series, runtime: Runtime = Runtime.AUTO) -> ReplayResult:
    """Score every reading of ``series`` in time order, as an agent receiving them would."""
    r = Replayer(bundle, series, runtime)
    r.advance(len(series.values))
    return r.result()


def write_csv(result: ReplayResult, path: Path) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", *result.features, "score", "likelihood", "is_anomaly", "top_feature"])
        for i, ts in enumerate(result.timestamps):
            w.writerow([f"{ts:.3f}", *(f"{v:.6g}" for v in result.values[i]),
                        "" if np.isnan(result.score[i]) else f"{result.score[i]:.6g}",
                        f"{result.likelihood[i]:.6f}", int(result.anomalous[i]), result.top_feature[i]])


def run(bundle_path: Path, data: Path, out: Path, trusted_keys: list[str], timestamp_column: str = "timestamp",
        runtime: Runtime = Runtime.AUTO) -> ReplayResult:
    bundle = load_bundle(bundle_path, trusted_keys)
    series = read_series(data, timestamp_column, bundle.manifest.preprocessing.features)
    if len(np.unique(series.timestamps)) != len(series.timestamps):
        raise ValueError(f"{data}: timestamps must be unique")
    result = replay(bundle, series, runtime)
    write_csv(result, out)
    return result
