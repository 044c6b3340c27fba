"""The generic check suite: every registered model, in every mode it supports, honours the contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cloud_hub.config import TrainingConfig
from cloud_hub.models import MODELS, Mode, ModelError, NotExportable, create, load_detector
from cloud_hub.models.base import balance, best_f1_threshold, class_weights

TINY = TrainingConfig(window=8, epochs=2, batch_size=32, hidden=16, latent=4, lstm_units=8, filters=8, attention_dim=8,
                      dnn_units=16, trees=10, top_k=5, patience=1)
CASES = [(name, mode) for name, cls in MODELS.items() for mode in cls.modes]


def tiny_data(n: int = 240, steps: int = 8, channels: int = 2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(steps)[None, :, None]
    x = 0.5 + 0.2 * np.sin(t / 2 + rng.uniform(0, 6, (n, 1, 1))) + rng.normal(0, 0.02, (n, steps, channels))
    y = np.zeros(n, np.int64)
    y[: n // 4] = 1
    x[: n // 4, -3:, 0] += 0.6  # attacks: a jump in the last readings of channel 0
    return x.astype(np.float32), y


@pytest.mark.parametrize(("name", "mode"), CASES, ids=[f"{n}-{m.value}" for n, m in CASES])
def test_detector_contract(name: str, mode: Mode, tmp_path: Path) -> None:
    x, y = tiny_data()
    det = create(name, TINY, mode)
    report = det.fit(x, y)  # unsupervised models drop the attack rows themselves
    assert report.train_samples > 0 and report.val_samples > 0
    if mode == Mode.UNSUPERVISED:
        assert report.train_samples + report.val_samples == int((y == 0).sum())
    scores = det.score(x)
    assert scores.shape == (len(x),) and np.isfinite(scores).all()
    assert np.isfinite(det.threshold)
    assert det.predict(x).dtype == bool
    # Attacks score higher on average than normal samples, even after two epochs.
    assert scores[y == 1].mean() > scores[y == 0].mean()

    det.save(tmp_path / "m")
    again = load_detector(tmp_path / "m")
    assert type(again) is type(det) and again.mode == mode and again.threshold == det.threshold
    np.testing.assert_allclose(again.score(x), scores, rtol=1e-4, atol=1e-5)

    if not det.quantizations:
        assert det.export_note, f"{name} exports nothing and must say why"
        with pytest.raises(NotExportable):
            det.export_tflite("int8")
        return
    assert "int8" in det.quantizations, f"{name}: int8 is the edge default; declare why not if it cannot"
    model = again.export_tflite("int8")
    ex = again.exported_scoring(model)
    assert np.isfinite(ex.threshold) and len(ex.val_scores) > 0
    t_scores = again.tflite_scores(model, x, ex.scoring)
    assert t_scores.shape == scores.shape and np.isfinite(t_scores).all()
    assert np.corrcoef(t_scores, scores)[0, 1] > 0.8 or np.ptp(scores) < 1e-3


def test_registry_and_modes() -> None:
    assert {"ae-lstm", "anomalynet", "vae-dnn", "deep-ae", "svm", "random-forest", "isolation-forest", "lstm",
            "cnn", "cnn-lstm", "ae-only"} <= set(MODELS)
    assert all(cls.summary and cls.modes for cls in MODELS.values())
    with pytest.raises(ModelError, match="does not support supervised"):
        create("ae-lstm", TINY, Mode.SUPERVISED)
    x, _ = tiny_data()
    with pytest.raises(ModelError, match="needs labelled data"):
        create("svm", TINY).fit(x)
    with pytest.raises(ModelError, match="at least one attack class"):
        create("random-forest", TINY).fit(x, np.zeros(len(x), np.int64))


def test_threshold_and_imbalance_helpers() -> None:
    y = np.array([0] * 90 + [1] * 10)
    scores = np.where(y == 1, 0.9, 0.1) + np.linspace(0, 0.05, 100)
    t = best_f1_threshold(scores, y)
    assert ((scores > t) == (y == 1)).all()
    xb, yb = balance(np.arange(100)[:, None], y, seed=0)
    assert (yb == 0).sum() == (yb == 1).sum() == 90 and set(xb[yb == 1, 0]) <= set(range(90, 100))
    w = class_weights(y)
    assert w[1] == pytest.approx(5.0) and w[0] == pytest.approx(100 / 180)


def test_vae_dnn_keeps_the_top_k_features() -> None:
    x, y = tiny_data()
    det = create("vae-dnn", TINY, Mode.SUPERVISED)
    det.fit(x, y)
    assert len(det.selected) == TINY.top_k  # type: ignore[attr-defined]
    # The informative features (channel 0 of the last three readings: flattened 10, 12, 14) rank first.
    importance = np.asarray(det.importance)  # type: ignore[attr-defined]
    assert int(np.argmax(importance)) in {10, 12, 14} and int(np.argmax(importance)) in det.selected  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ["ae-lstm", "anomalynet"])
def test_prediction_heads_predict_a_change_from_the_newest_reading_they_see(name: str) -> None:
    """With prediction_residual the head is reading t-1 plus a learned change: zero the
    change layer and the prediction is exactly t-1 (never reading t, which the head must not see).
    Hybrids only: their reconstruction head still sees a level shift that persistence would predict."""
    from dataclasses import replace

    x, _ = tiny_data(16)
    det = create(name, replace(TINY, prediction_residual=True), Mode.UNSUPERVISED)
    model = det.build(x.shape[1], x.shape[2])
    change = model.get_layer("change")
    change.set_weights([np.zeros_like(w) for w in change.get_weights()])
    pred = model.predict(x, verbose=0)[-1]
    np.testing.assert_allclose(pred, x[:, -2, :], atol=1e-6)

    plain = create(name, TINY, Mode.UNSUPERVISED).build(x.shape[1], x.shape[2])  # the default: plain Dense head
    assert "change" not in [layer.name for layer in plain.layers]


def test_ae_lstm_prediction_steps_limit_what_the_lstm_reads() -> None:
    """prediction_steps=3: the prediction depends on readings t-3..t-1 only (never on t, nor on older ones),
    and the model still converts to int8 and runs."""
    from dataclasses import replace

    x, _ = tiny_data(16)
    det = create("ae-lstm", replace(TINY, prediction_steps=3), Mode.UNSUPERVISED)
    model = det.build(x.shape[1], x.shape[2])
    pred = model.predict(x, verbose=0)[-1]
    changed = x.copy()
    changed[:, :4, :] += 0.3  # older than t-3
    changed[:, -1, :] -= 0.3  # the reading being predicted
    np.testing.assert_allclose(model.predict(changed, verbose=0)[-1], pred, atol=1e-6)
    changed[:, -2, :] += 0.3  # t-1 is read
    assert np.abs(model.predict(changed, verbose=0)[-1] - pred).max() > 1e-4
    det.fit(x)
    tfl = det.export_tflite("int8")
    assert np.isfinite(det.tflite_scores(tfl, x, det.exported_scoring(tfl).scoring)).all()
