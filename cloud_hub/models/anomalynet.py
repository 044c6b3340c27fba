"""IoT-AnomalyNet: CNN + LSTM + autoencoder + attention.

A Conv1D block (dropout 0.2) extracts local patterns, an LSTM runs over them, and scaled dot-product
attention pools the LSTM states: the query is the last state, keys and values are projections of
every state, softmax over time steps gives the weights and the context vector is their weighted sum.
Unsupervised, the encoder (context + last state) feeds a dense decoder that reconstructs the window,
and the same encoder run over the past readings predicts the newest one (α·rec + β·pred, like
AE-LSTM).  Supervised, the context feeds a softmax classifier.
"""

from __future__ import annotations

import math
from typing import Any

from cloud_hub.models.ae_lstm import past, prediction_head
from cloud_hub.models.base import Mode
from cloud_hub.models.keras_detector import KerasDetector, classifier_head


class AnomalyNet(KerasDetector):
    name = "anomalynet"
    summary = "IoT-AnomalyNet: CNN + LSTM + attention (q/k/v) encoder, AE decoder and predictor or classifier"
    modes = (Mode.UNSUPERVISED, Mode.SUPERVISED)

    def build(self, steps: int, channels: int) -> Any:
        import keras
        from keras import layers

        cfg = self.cfg
        d = cfg.attention_dim
        conv = layers.Conv1D(cfg.filters, cfg.kernel_size, padding="same", activation="relu")
        drop = layers.Dropout(cfg.dropout)
        lstm = layers.LSTM(cfg.lstm_units, return_sequences=True, return_state=True, unroll=True)
        query, key, value = layers.Dense(d, name="query"), layers.Dense(d, name="key"), layers.Dense(d, name="value")
        scale = layers.Rescaling(1.0 / math.sqrt(d))

        def encode(seq: Any) -> Any:
            states, last, _ = lstm(drop(conv(seq)))
            weights = layers.Softmax(axis=-1)(scale(layers.Dot(axes=(1, 2))([query(last), key(states)])))  # (b, T)
            context = layers.Dot(axes=(1, 1))([weights, value(states)])  # (b, d)
            return layers.Concatenate()([context, last])

        inp = keras.Input((steps, channels), name="window")
        if self.supervised:
            return keras.Model(inp, classifier_head(encode(inp), cfg.dnn_units, cfg.dropout, self.n_classes),
                               name="anomalynet")
        z = layers.Dense(cfg.latent, activation="relu", name="latent")(encode(inp))
        h = layers.Dense(cfg.hidden, activation="relu")(z)
        rec = layers.Reshape((steps, channels), name="reconstruction")(layers.Dense(steps * channels)(h))
        pred = prediction_head(inp, encode(past(inp)), channels, cfg.prediction_residual)
        return keras.Model(inp, [rec, pred], name="anomalynet")
