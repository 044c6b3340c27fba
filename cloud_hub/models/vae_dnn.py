"""VAE-DNN: XGBoost keeps the top-k features, a VAE encodes them, a DNN classifies.

Supervised: XGBoost (class-balanced) ranks the input features by gain and keeps the top ``top_k``;
a VAE (reparameterisation z = μ + σ·ε, loss = reconstruction MSE + KL) is trained on those features;
the DNN (ELU, softmax) classifies [selected features, μ] into normal / attack classes with the encoder
frozen.  Unsupervised: the VAE alone over all features; score = reconstruction error of the
deterministic pass (z = μ).  Selection is a fixed 0/1 Dense layer, so the exported model takes the
full sample and needs nothing else.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cloud_hub.models.base import Mode, class_weights, flat
from cloud_hub.models.keras_detector import KerasDetector, classifier_head
from shared.scoring import Head


class VAEDNN(KerasDetector):
    name = "vae-dnn"
    summary = "VAE-DNN: XGBoost top-k features → VAE latent → DNN (ELU, softmax); unsupervised: VAE alone"
    modes = (Mode.SUPERVISED, Mode.UNSUPERVISED)
    unsupervised_heads = (Head.RECONSTRUCTION,)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.selected: list[int] = []
        self.importance: list[float] = []
        self._vae: Any = None
        self._encoder_layers: list[Any] = []

    def prepare(self, x: np.ndarray, y: np.ndarray | None, x_val: np.ndarray, y_val: np.ndarray | None) -> None:
        n = x.shape[1] * x.shape[2]
        if not self.supervised or y is None:
            self.selected, self.importance = list(range(n)), []
            return
        from xgboost import XGBClassifier

        weights = class_weights(y)
        xgb = XGBClassifier(n_estimators=min(self.cfg.trees, 200), max_depth=4, learning_rate=0.1,
                            random_state=self.cfg.seed, n_jobs=2, importance_type="gain")
        xgb.fit(flat(x), y, sample_weight=np.array([weights[int(c)] for c in y]))
        gain = np.asarray(xgb.feature_importances_, np.float64)
        order = np.argsort(-gain, kind="stable")[: min(self.cfg.top_k, n)]
        self.selected = sorted(int(i) for i in order)
        self.importance = [float(g) for g in gain]

    def build(self, steps: int, channels: int) -> Any:
        import keras
        from keras import layers

        cfg = self.cfg
        n, k = steps * channels, len(self.selected)
        inp = keras.Input((steps, channels), name="window")
        xs = layers.Flatten()(inp)
        if self.supervised:
            select = np.zeros((n, k), np.float32)
            select[self.selected, np.arange(k)] = 1.0
            xs = layers.Dense(k, use_bias=False, trainable=False, name="select",
                              kernel_initializer=keras.initializers.Constant(select))(xs)
        enc_h = layers.Dense(cfg.hidden, activation="relu", name="enc_hidden")
        z_mean, z_logvar = layers.Dense(cfg.latent, name="z_mean"), layers.Dense(cfg.latent, name="z_logvar")
        dec_h, dec_out = layers.Dense(cfg.hidden, activation="relu", name="dec_hidden"), layers.Dense(k, name="dec_out")
        h = enc_h(xs)
        mu, logvar = z_mean(h), z_logvar(h)
        self._encoder_layers = [enc_h, z_mean, z_logvar]
        # Training graph: reparameterised sample, KL as a second output whose "loss" is its mean.
        sampling, kl_layer = _vae_layers()
        z = sampling()([mu, logvar])
        kl = kl_layer()([mu, logvar])
        self._vae = keras.Model(inp, [dec_out(dec_h(z)), kl], name="vae_train")
        self._vae.compile(optimizer=keras.optimizers.Adam(learning_rate=cfg.learning_rate),
                          loss=["mse", _mean_of_prediction], loss_weights=[1.0, cfg.kl_weight / max(k, 1)])
        if self.supervised:
            features = layers.Concatenate()([xs, mu])
            out = classifier_head(features, cfg.dnn_units, cfg.dropout, self.n_classes, activation="elu")
            return keras.Model(inp, out, name="vae_dnn")
        rec = layers.Reshape((steps, channels), name="reconstruction")(dec_out(dec_h(mu)))
        return keras.Model(inp, rec, name="vae")

    def compile(self, model: Any) -> Any:
        return model  # compiled in train_network, once the encoder is frozen

    def train_network(self, x: np.ndarray, y: np.ndarray | None, x_val: np.ndarray,
                      y_val: np.ndarray | None) -> int:
        def vae_targets(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return flat(a)[:, self.selected], np.zeros((len(a), 1), np.float32)

        h = self._vae.fit(x, vae_targets(x), validation_data=(x_val, vae_targets(x_val)), epochs=self.cfg.epochs,
                          batch_size=self.cfg.batch_size, shuffle=True, verbose=0, callbacks=self.callbacks())
        epochs = len(h.history["loss"])
        if not self.supervised:
            return epochs
        for layer in self._encoder_layers:
            layer.trainable = False
        super().compile(self.model)
        return epochs + super().train_network(x, y, x_val, y_val)

    def state(self) -> dict[str, Any]:
        return {**super().state(), "selected": self.selected, "importance": self.importance}

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.selected, self.importance = list(state["selected"]), list(state["importance"])


def _mean_of_prediction(y_true: Any, y_pred: Any) -> Any:
    from keras import ops

    return ops.mean(y_pred, axis=-1)


_LAYERS: dict[str, Any] = {}


def _vae_layers() -> tuple[Any, Any]:
    """The sampling and KL layers of the training graph (defined lazily: keras loads only when used)."""
    if not _LAYERS:
        import keras
        from keras import ops

        class Sampling(keras.layers.Layer):  # type: ignore[misc]
            """z = μ + exp(½·log σ²)·ε (training graph only; never saved)."""

            def call(self, inputs: Any) -> Any:
                mu, logvar = inputs
                return mu + ops.exp(0.5 * logvar) * keras.random.normal(ops.shape(mu))

        class KL(keras.layers.Layer):  # type: ignore[misc]
            """Per-sample KL(q(z|x) ‖ N(0, I))."""

            def call(self, inputs: Any) -> Any:
                mu, logvar = inputs
                return 0.5 * ops.sum(ops.exp(logvar) + mu**2 - 1.0 - logvar, axis=-1, keepdims=True)

        _LAYERS.update(sampling=Sampling, kl=KL)
    return _LAYERS["sampling"], _LAYERS["kl"]
