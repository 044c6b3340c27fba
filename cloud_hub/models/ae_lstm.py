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


def past(inp: Any, steps: int = 0) -> Any:
    """Readings t-w+1 .. t-1 (or only the newest ``steps`` of them): what a prediction head may see."""
    from keras import layers

    skip = max(int(inp.shape[1]) - 1 - steps, 0) if steps > 0 else 0
    return layers.Cropping1D((skip, 1))(inp)


def prediction_head(inp: Any, features: Any, channels: int, residual: bool) -> Any:
    """The newest reading predicted from ``features`` of the readings before it.

    ``residual``: reading t-1 plus a learned change.  The same family of functions as a plain Dense
    head (the encoder sees t-1), but in int8 the encoder's quantisation noise reaches the output scaled
    by the small change rather than by the whole signal range: the unrolled LSTM's int8 noise on the
    prediction falls ~3× (docs/benchmarks.md, "Quantization").  The price: a level shift that lasts past
    t-1 is predicted away by persistence, so the Keras model detects fewer of them — off by default."""
    from keras import layers

    if not residual:
        return layers.Dense(channels, name="prediction")(features)
    steps = int(inp.shape[1])
    newest_seen = layers.Reshape((channels,))(layers.Cropping1D((steps - 2, 1))(inp))  # reading t-1
    return layers.Add(name="prediction")([newest_seen, layers.Dense(channels, name="change")(features)])


class AELSTM(KerasDetector):
    name = "ae-lstm"
    summary = "AE-LSTM hybrid: dense autoencoder + LSTM next-step predictor, A = α·rec + β·pred"
    modes = (Mode.UNSUPERVISED,)

    def build(self, steps: int, channels: int) -> Any:
        import keras
        from keras import layers

        inp = keras.Input((steps, channels), name="window")
        rec = dense_autoencoder(inp, steps, channels, [self.cfg.hidden], self.cfg.latent)
        state = layers.LSTM(self.cfg.lstm_units, unroll=True)(past(inp, self.cfg.prediction_steps))
        pred = prediction_head(inp, state, channels, self.cfg.prediction_residual)
        return keras.Model(inp, [rec, pred], name="ae_lstm")
