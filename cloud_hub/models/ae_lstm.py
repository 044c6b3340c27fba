"""AE-LSTM hybrid: a dense autoencoder reconstructs the window, an LSTM predicts its newest reading.

Score A(t) = α·reconstruction error + β·prediction error (see shared.scoring).  The LSTM is built
with ``unroll=True``: TF's converter crashes on full-int8 quantisation of the fused LSTM op, while
the unrolled cell quantises cleanly.
"""

from __future__ import annotations

from typing import Any

from cloud_hub.models.base import Mode
from cloud_hub.models.keras_detector import KerasDetector


def dense_autoencoder(inp: Any, steps: int, channels: int, widths: list[int], latent: int) -> Any:
    """Flatten → Dense(widths...) → latent → mirrored widths → reconstruction (steps, channels)."""
    from keras import layers

    h = layers.Flatten()(inp)
    for w in widths:
        h = layers.Dense(w, activation="relu")(h)
    h = layers.Dense(latent, activation="relu", name="latent")(h)
    for w in reversed(widths):
        h = layers.Dense(w, activation="relu")(h)
    return layers.Reshape((steps, channels), name="reconstruction")(layers.Dense(steps * channels)(h))


def past(inp: Any) -> Any:
    """Readings t-w+1 .. t-1: what a prediction head may see."""
    from keras import layers

    return layers.Cropping1D((0, 1))(inp)


class AELSTM(KerasDetector):
    name = "ae-lstm"
    summary = "AE-LSTM hybrid: dense autoencoder + LSTM next-step predictor, A = α·rec + β·pred"
    modes = (Mode.UNSUPERVISED,)

    def build(self, steps: int, channels: int) -> Any:
        import keras
        from keras import layers

        inp = keras.Input((steps, channels), name="window")
        rec = dense_autoencoder(inp, steps, channels, [self.cfg.hidden], self.cfg.latent)
        state = layers.LSTM(self.cfg.lstm_units, unroll=True)(past(inp))
        pred = layers.Dense(channels, name="prediction")(state)
        return keras.Model(inp, [rec, pred], name="ae_lstm")
