"""Reconstruction-only detectors: the paper's deep autoencoder and the AE half of AE-LSTM."""

from __future__ import annotations

from typing import Any

from cloud_hub.models.ae_lstm import dense_autoencoder
from cloud_hub.models.base import Mode
from cloud_hub.models.keras_detector import KerasDetector
from shared.scoring import Head


class DeepAE(KerasDetector):
    name = "deep-ae"
    summary = "Deep dense autoencoder (2·hidden, hidden, latent, mirrored); reconstruction-error threshold"
    modes = (Mode.UNSUPERVISED,)
    unsupervised_heads = (Head.RECONSTRUCTION,)

    def build(self, steps: int, channels: int) -> Any:
        import keras

        inp = keras.Input((steps, channels), name="window")
        widths = [2 * self.cfg.hidden, self.cfg.hidden]
        return keras.Model(inp, dense_autoencoder(inp, steps, channels, widths, self.cfg.latent), name="deep_ae")


class AEOnly(KerasDetector):
    name = "ae-only"
    summary = "Baseline: the AE-LSTM's autoencoder alone (ablation, β = 0)"
    modes = (Mode.UNSUPERVISED,)
    unsupervised_heads = (Head.RECONSTRUCTION,)

    def build(self, steps: int, channels: int) -> Any:
        import keras

        inp = keras.Input((steps, channels), name="window")
        return keras.Model(inp, dense_autoencoder(inp, steps, channels, [self.cfg.hidden], self.cfg.latent),
                           name="ae_only")
