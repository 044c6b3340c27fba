"""TFLite inference without TensorFlow: LiteRT first, then tflite-runtime, then tf.lite if present.

The hub uses this same wrapper to measure how well the exported model agrees with Keras, so what
it reports is what the edge will run.
"""

from __future__ import annotations

import enum
import importlib
from typing import Any

import numpy as np


class Runtime(enum.StrEnum):
    AUTO = "auto"
    LITERT = "litert"
    TFLITE_RUNTIME = "tflite_runtime"
    TENSORFLOW = "tensorflow"


_MODULES = {
    Runtime.LITERT: "ai_edge_litert.interpreter",
    Runtime.TFLITE_RUNTIME: "tflite_runtime.interpreter",
    Runtime.TENSORFLOW: "tensorflow.lite.python.interpreter",  # what tf.lite.Interpreter is
}


class RuntimeUnavailable(RuntimeError):
    """No TFLite interpreter could be imported."""


def interpreter_class(preference: Runtime = Runtime.AUTO) -> tuple[Any, Runtime]:
    order = [Runtime.LITERT, Runtime.TFLITE_RUNTIME, Runtime.TENSORFLOW] if preference == Runtime.AUTO else [preference]
    errors = []
    for rt in order:
        try:
            module = importlib.import_module(_MODULES[rt])
            return module.Interpreter, rt
        except Exception as exc:  # ImportError, or tflite-runtime's numpy-2 AttributeError
            errors.append(f"{rt.value}: {exc}")
    raise RuntimeUnavailable("no TFLite interpreter available (" + "; ".join(errors) + ")")


class TFLiteModel:
    """A loaded AE-LSTM TFLite model: float windows in, (reconstruction, prediction) floats out.

    Handles int8/float16/float32 models alike: inputs are quantised and outputs dequantised with the
    tensors' own parameters.  Not thread-safe: use one instance per scoring thread.
    """

    def __init__(self, model_content: bytes, runtime: Runtime = Runtime.AUTO, num_threads: int = 1) -> None:
        cls, self.runtime = interpreter_class(runtime)
        self._interp = cls(model_content=model_content, num_threads=num_threads)
        self._interp.allocate_tensors()
        self._input = self._interp.get_input_details()[0]
        outputs = self._interp.get_output_details()
        by_rank = {len(o["shape_signature"] if len(o.get("shape_signature", [])) else o["shape"]): o for o in outputs}
        if len(outputs) != 2 or set(by_rank) != {2, 3}:
            raise ValueError("model must have two outputs: reconstruction (b, w, f) and prediction (b, f)")
        self._rec, self._pred = by_rank[3], by_rank[2]
        self.window = int(self._input["shape"][1])
        self.n_features = int(self._input["shape"][2])
        self.input_dtype = np.dtype(self._input["dtype"])
        self._batch = int(self._input["shape"][0])

    def _resize(self, batch: int) -> None:
        if batch != self._batch:
            self._interp.resize_tensor_input(self._input["index"], [batch, self.window, self.n_features])
            self._interp.allocate_tensors()
            self._input = self._interp.get_input_details()[0]
            outs = {o["index"]: o for o in self._interp.get_output_details()}
            self._rec, self._pred = outs[self._rec["index"]], outs[self._pred["index"]]
            self._batch = batch

    def _quantise(self, x: np.ndarray) -> np.ndarray:
        if self.input_dtype in (np.int8, np.uint8):
            scale, zero = self._input["quantization"]
            info = np.iinfo(self.input_dtype)
            return np.clip(np.round(x / scale + zero), info.min, info.max).astype(self.input_dtype)
        return x.astype(self.input_dtype)

    def _output(self, detail: dict[str, Any]) -> np.ndarray:
        raw = self._interp.get_tensor(detail["index"])
        if np.dtype(detail["dtype"]) in (np.int8, np.uint8):
            scale, zero = detail["quantization"]
            return (raw.astype(np.float32) - zero) * scale
        return raw.astype(np.float32)

    def predict(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(b, w, f) float windows → reconstruction (b, w, f), prediction (b, f)."""
        x = np.asarray(windows, dtype=np.float32)
        self._resize(x.shape[0])
        self._interp.set_tensor(self._input["index"], self._quantise(x))
        self._interp.invoke()
        return self._output(self._rec), self._output(self._pred)

    def predict_batched(self, windows: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
        recs, preds = [], []
        for i in range(0, len(windows), batch):
            r, p = self.predict(windows[i : i + batch])
            recs.append(r)
            preds.append(p)
        return np.concatenate(recs), np.concatenate(preds)
