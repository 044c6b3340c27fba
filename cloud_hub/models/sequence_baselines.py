"""Sequence baselines: LSTM (prediction only), CNN and CNN-LSTM.

Unsupervised they predict the newest reading from the ones before it (score = prediction error);
supervised (cnn, cnn-lstm) they classify the whole sample with a softmax head.
"""

from __future__ import annotations

from typing import Any

from cloud_hub.models.ae_lstm import past
from cloud_hub.models.base import Mode
from cloud_hub.models.keras_detector import KerasDetector, classifier_head
from shared.scoring import Head


class _SequenceModel(KerasDetector):
    unsupervised_heads = (Head.PREDICTION,)

    def encoder(self, seq: Any) -> Any:
        raise NotImplementedError

    def build(self, steps: int, channels: int) -> Any:
        import keras
        from keras import layers

        inp = keras.Input((steps, channels), name="window")
        if self.supervised:
            out = classifier_head(self.encoder(inp), self.cfg.dnn_units, self.cfg.dropout, self.n_classes)
        else:
            out = layers.Dense(channels, name="prediction")(self.encoder(past(inp)))
        return keras.Model(inp, out, name=self.name.replace("-", "_"))

    def conv(self, seq: Any) -> Any:
        from keras import layers

        h = layers.Conv1D(self.cfg.filters, self.cfg.kernel_size, padding="same", activation="relu")(seq)
        h = layers.Conv1D(self.cfg.filters, self.cfg.kernel_size, padding="same", activation="relu")(h)
        return layers.Dropout(self.cfg.dropout)(h)


class LSTMBaseline(_SequenceModel):
    name = "lstm"
    summary = "Baseline: LSTM next-step predictor alone (prediction error)"
    modes = (Mode.UNSUPERVISED,)

    def encoder(self, seq: Any) -> Any:
        from keras import layers

        return layers.LSTM(self.cfg.lstm_units, unroll=True)(seq)


class CNNBaseline(_SequenceModel):
    name = "cnn"
    summary = "Baseline: 1-D CNN; next-step predictor, or classifier when labelled"
    modes = (Mode.UNSUPERVISED, Mode.SUPERVISED)

    def encoder(self, seq: Any) -> Any:
        from keras import layers

        h = self.conv(seq)
        return layers.Concatenate()([layers.GlobalAveragePooling1D()(h), layers.GlobalMaxPooling1D()(h)])


class CNNLSTMBaseline(_SequenceModel):
    name = "cnn-lstm"
    summary = "Baseline: 1-D CNN feature extractor + LSTM; next-step predictor, or classifier when labelled"
    modes = (Mode.UNSUPERVISED, Mode.SUPERVISED)

    def encoder(self, seq: Any) -> Any:
        from keras import layers

        return layers.LSTM(self.cfg.lstm_units, unroll=True)(self.conv(seq))
