"""AE-LSTM hybrid: a dense autoencoder reconstructs the window, an LSTM predicts its newest reading.

One Keras model, one input ``(window, features)``, two outputs: the reconstruction ``(window,
features)`` and the prediction ``(features,)`` of the last reading made from the ``window - 1``
readings before it.  The LSTM is built with ``unroll=True``: TF's converter crashes on full-int8
quantisation of the fused LSTM op, while the unrolled cell quantises cleanly.
"""

from __future__ import annotations

from typing import Any

NAME = "ae-lstm"


def build(window: int, n_features: int, hidden: int, latent: int, lstm_units: int, learning_rate: float,
          alpha: float, beta: float) -> Any:
    import keras
    from keras import layers

    inp = keras.Input((window, n_features), name="window")
    flat = layers.Flatten()(inp)
    h = layers.Dense(hidden, activation="relu")(flat)
    z = layers.Dense(latent, activation="relu", name="latent")(h)
    h2 = layers.Dense(hidden, activation="relu")(z)
    rec = layers.Reshape((window, n_features), name="reconstruction")(layers.Dense(window * n_features)(h2))
    past = layers.Cropping1D((0, 1))(inp)  # readings t-w+1 .. t-1
    state = layers.LSTM(lstm_units, unroll=True)(past)
    pred = layers.Dense(n_features, name="prediction")(state)
    model = keras.Model(inp, [rec, pred], name="ae_lstm")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=["mse", "mse"],
        loss_weights=[max(alpha, 1e-3), max(beta, 1e-3)],
    )
    return model


def targets(x: Any) -> tuple[Any, Any]:
    """Training targets for windows x: the window itself and its last reading."""
    return x, x[:, -1, :]
