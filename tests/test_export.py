"""Export: every quantization converts, runs in LiteRT, and records agreement with Keras."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shared import bundle as bundle_fmt
from shared.inference import TFLiteModel
from shared.signing import parse_public_key

pytestmark = pytest.mark.integration


def test_int8_bundle_is_fully_integer_and_agrees_with_keras(trained_home) -> None:  # type: ignore[no-untyped-def]
    home, exported = trained_home
    bundle = bundle_fmt.load_dir(exported.bundle_dir, [parse_public_key(home.public_key())])
    m = bundle.manifest
    assert m.quantization.mode == "int8" and m.version == 1 and m.name == "ae-lstm"
    model = TFLiteModel(bundle.model_bytes)
    assert model.input_dtype == np.int8
    agree = m.quantization.agreement
    assert agree is not None and agree.windows > 100
    assert agree.score_pearson > 0.8 and agree.flag_agreement > 0.95
    manifest = json.loads(bundle.files[bundle_fmt.MANIFEST])
    assert manifest["files"][bundle_fmt.MODEL_FILE]["sha256"] == bundle_fmt.sha256_hex(bundle.model_bytes)


@pytest.mark.parametrize("mode", ["float32", "float16", "dynamic"])
def test_other_quantizations_export(trained_home, mode: str) -> None:  # type: ignore[no-untyped-def]
    from cloud_hub.export import Quantization, export

    home, int8 = trained_home
    r = export(home, 1, Quantization(mode))
    assert r.agreement.score_pearson > 0.99 and r.agreement.flag_agreement > 0.99
    model = TFLiteModel((r.bundle_dir / bundle_fmt.MODEL_FILE).read_bytes())
    assert model.input_dtype == np.float32
    if mode == "float32":
        assert r.tflite_bytes > int8.tflite_bytes


def test_a_model_litert_cannot_run_is_refused_with_a_clear_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A constant training stream (NAB's art_flatline) converts to an int8 graph with zero-range tensors
    that LiteRT's XNNPACK refuses to prepare: export says so instead of crashing mid-way."""
    from dataclasses import replace

    from cloud_hub import training
    from cloud_hub.data import TrainingData
    from cloud_hub.export import Quantization, export
    from cloud_hub.home import HubHome
    from cloud_hub.models import NotExportable

    home = HubHome(tmp_path / "home")
    home.init()
    cfg = replace(home.config().training, epochs=2, window=24, wavelet_level=0)
    result = training.train(home, TrainingData(["value"], [np.full((600, 1), 5.0)], "flat", 600), cfg)
    with pytest.raises(NotExportable, match="does not run on LiteRT"):
        export(home, result.version, Quantization.INT8)
    assert not list(home.bundles_dir.glob("*.tar.gz"))  # nothing half-written
