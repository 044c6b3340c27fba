"""Keras detectors: reconstruction / prediction heads (unsupervised) or a softmax head (supervised).

Subclasses only build the network; fitting, early stopping, imbalance handling, the scoring that the
edge repeats on the exported model, TFLite conversion and persistence live here once.
"""

from __future__ import annotations

import os
import tempfile
from abc import abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from cloud_hub.models.base import Detector, ExportedScoring, FitReport, ModelError, NotExportable
from cloud_hub.models.calibration import int8_calibration
from shared.scoring import Head, ScoringParams, calibrate, head_errors, score_outputs

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def convert(keras_model: Any, quantization: str, representative: np.ndarray) -> bytes:
    """Keras → TFLite via a SavedModel (Keras 3's direct path trips over resource variables)."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        keras_model.export(tmp, format="tf_saved_model", verbose=False)
        conv = tf.lite.TFLiteConverter.from_saved_model(tmp)
        if quantization != "float32":
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantization == "float16":
            conv.target_spec.supported_types = [tf.float16]
        elif quantization == "int8":
            rep = np.asarray(representative, np.float32)

            def dataset():  # type: ignore[no-untyped-def]
                for i in range(len(rep)):
                    yield [rep[i : i + 1]]

            conv.representative_dataset = dataset
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            conv.inference_input_type = tf.int8
            conv.inference_output_type = tf.int8
        elif quantization not in ("dynamic", "float32"):
            raise NotExportable(f"unknown quantization {quantization!r}")
        return bytes(conv.convert())


class KerasDetector(Detector):
    """One Keras model whose outputs are the heads named by :meth:`heads`."""

    unsupervised_heads: tuple[Head, ...] = (Head.RECONSTRUCTION, Head.PREDICTION)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model: Any = None
        self.scoring: ScoringParams | None = None

    # ------------------------------------------------------------------ what subclasses provide

    @abstractmethod
    def build(self, steps: int, channels: int) -> Any:
        """The network: input (steps, channels) → outputs in the order of :meth:`heads`."""

    def heads(self) -> list[Head]:
        return [Head.PROBABILITY] if self.supervised else list(self.unsupervised_heads)

    def prepare(self, x: np.ndarray, y: np.ndarray | None, x_val: np.ndarray, y_val: np.ndarray | None) -> None:
        """Hook before the network is built (e.g. vae-dnn ranks features here)."""

    def train_network(self, x: np.ndarray, y: np.ndarray | None, x_val: np.ndarray,
                      y_val: np.ndarray | None) -> int:
        """Fit self.model; returns epochs run.  Override for multi-stage training."""

        weights = None
        if self.supervised:
            if y is None:
                raise ModelError(f"{self.name} is trained supervised: it needs labels")
            x, y, weights = self.balanced(x, y)
        history = self.model.fit(
            x, self.targets(x, y), validation_data=(x_val, self.targets(x_val, y_val)),
            epochs=self.cfg.epochs, batch_size=self.cfg.batch_size, shuffle=True, verbose=0,
            class_weight=weights,
            callbacks=self.callbacks(),
        )
        return len(history.history["loss"])

    # ------------------------------------------------------------------ shared machinery

    def callbacks(self) -> list[Any]:
        import keras

        progress, epochs = self.on_epoch, self.cfg.epochs

        class Progress(keras.callbacks.Callback):  # type: ignore[misc]
            def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
                if progress:
                    progress(epoch + 1, epochs, {k: float(v) for k, v in (logs or {}).items()})

        return [keras.callbacks.EarlyStopping(patience=self.cfg.patience, restore_best_weights=True), Progress()]

    def compile(self, model: Any) -> Any:
        import keras

        heads = self.heads()
        losses = ["sparse_categorical_crossentropy" if h == Head.PROBABILITY else "mse" for h in heads]
        weights = [max(self.cfg.alpha, 1e-3) if h == Head.RECONSTRUCTION else max(self.cfg.beta, 1e-3)
                   if h == Head.PREDICTION else 1.0 for h in heads]
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=self.cfg.learning_rate), loss=losses,
                      loss_weights=weights)
        return model

    def targets(self, x: np.ndarray, y: np.ndarray | None) -> Any:
        out: list[np.ndarray] = []
        for h in self.heads():
            if h == Head.RECONSTRUCTION:
                out.append(x)
            elif h == Head.PREDICTION:
                out.append(x[:, -1, :])
            else:
                if y is None:
                    raise ModelError("labels required")
                out.append(np.asarray(y, np.int64))
        return out[0] if len(out) == 1 else tuple(out)

    def outputs(self, x: np.ndarray) -> dict[Head, np.ndarray]:
        raw = self.model.predict(np.asarray(x, np.float32), batch_size=1024, verbose=0)
        raw = raw if isinstance(raw, list | tuple) else [raw]
        return dict(zip(self.heads(), raw, strict=True))

    def _fit(self, x: np.ndarray, y: np.ndarray | None, x_val: np.ndarray, y_val: np.ndarray | None) -> FitReport:
        import keras

        keras.utils.set_random_seed(self.cfg.seed)
        self.prepare(x, y, x_val, y_val)
        self.model = self.compile(self.build(x.shape[1], x.shape[2]))
        epochs = self.train_network(x, y, x_val, y_val)
        self.scoring = self._calibrated_scoring(x_val, self.outputs(x_val))
        return FitReport(epochs=epochs)

    def _calibrated_scoring(self, x_val: np.ndarray, outputs: dict[Head, np.ndarray]) -> ScoringParams:
        """How a model's outputs become scores (per-channel normalisers from its validation errors); the
        threshold on those scores is learned afterwards, once, by :meth:`Detector.learn_threshold`."""
        if self.supervised:
            return ScoringParams(heads=[Head.PROBABILITY.value])
        return calibrate(head_errors(x_val, outputs), self.cfg.alpha, self.cfg.beta,
                         heads=[h.value for h in self.heads()])

    def fitted_scoring(self) -> ScoringParams:
        if self.scoring is None:
            raise ModelError(f"{self.name} is not fitted: fit or load it first")
        return self.scoring

    def score(self, x: np.ndarray) -> np.ndarray:
        return score_outputs(np.asarray(x, np.float32), self.outputs(x), self.fitted_scoring()).scores

    def scoring_params(self) -> ScoringParams:
        return self.fitted_scoring()

    def export_tflite(self, quantization: str, representative: np.ndarray | None = None) -> bytes:
        if quantization not in self.quantizations:
            raise NotExportable(f"{self.name} does not support {quantization} export: {self.export_note}")
        if representative is None:  # the same int8 calibration whoever converts (export, tests, benchmarks)
            representative = int8_calibration(self)
        if representative is None:
            representative = self.calibration["representative"]
        return convert(self.model, quantization, representative)

    def exported_scoring(self, model: bytes) -> ExportedScoring:
        """Scoring for an exported model, re-learned on its own validation outputs exactly as fit() did
        for Keras (so quantisation noise does not shift the false-alarm rate); also its val scores."""
        from shared.inference import TFLiteModel

        x_val = self.calibration["x_val"]
        y_val = self.calibration.get("y_val")
        outputs = TFLiteModel(model, heads=self.heads()).predict_batched(x_val)
        params = self._calibrated_scoring(x_val, outputs)
        scores = score_outputs(x_val, outputs, params).scores
        return ExportedScoring(params, self.learn_threshold(scores, y_val if self.supervised else None), scores)

    def state(self) -> dict[str, Any]:
        return {"scoring": self.scoring.to_dict() if self.scoring else None}

    def load_state(self, state: dict[str, Any]) -> None:
        self.scoring = ScoringParams.from_dict(state["scoring"]) if state.get("scoring") else None

    def _save_weights(self, path: Path) -> None:
        self.model.save(path / "model.keras")

    def _load_weights(self, path: Path) -> None:
        import keras

        self.model = keras.models.load_model(path / "model.keras")


def classifier_head(features: Any, units: int, dropout: float, n_classes: int, activation: str = "relu") -> Any:
    """Dense → dropout → Dense(units/2) → softmax over classes (class 0 = normal)."""
    from keras import layers

    h = layers.Dense(units, activation=activation)(features)
    h = layers.Dropout(dropout)(h)
    h = layers.Dense(max(units // 2, 2), activation=activation)(h)
    return layers.Dense(n_classes, activation="softmax", name="probability")(h)
