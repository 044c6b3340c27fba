"""Every detector the hub can train, by name (``cloud-hub train --model NAME``)."""

from __future__ import annotations

from pathlib import Path

from cloud_hub.config import TrainingConfig
from cloud_hub.models.ae_lstm import AELSTM
from cloud_hub.models.anomalynet import AnomalyNet
from cloud_hub.models.autoencoders import AEOnly, DeepAE
from cloud_hub.models.base import Detector, EpochCallback, FitReport, Mode, ModelError, NotExportable
from cloud_hub.models.classic_baselines import IsolationForestBaseline, RandomForestBaseline, SVMBaseline
from cloud_hub.models.sequence_baselines import CNNBaseline, CNNLSTMBaseline, LSTMBaseline
from cloud_hub.models.vae_dnn import VAEDNN

MODELS: dict[str, type[Detector]] = {
    cls.name: cls
    for cls in (AELSTM, AnomalyNet, VAEDNN, DeepAE, SVMBaseline, RandomForestBaseline, IsolationForestBaseline,
                LSTMBaseline, CNNBaseline, CNNLSTMBaseline, AEOnly)
}
HYBRIDS = ("ae-lstm", "anomalynet", "vae-dnn")


def get(name: str) -> type[Detector]:
    try:
        return MODELS[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; choose from: {', '.join(MODELS)}") from None


def create(name: str, cfg: TrainingConfig, mode: Mode | None = None) -> Detector:
    return get(name)(cfg, mode)


def load_detector(path: Path) -> Detector:
    import json

    name = json.loads((path / "detector.json").read_text())["name"]
    return get(name).load(path)


__all__ = ["MODELS", "HYBRIDS", "Detector", "EpochCallback", "FitReport", "Mode", "ModelError", "NotExportable", "create", "get",
           "load_detector"]
