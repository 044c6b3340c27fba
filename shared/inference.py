"""TFLite inference without TensorFlow: LiteRT first, then tflite-runtime, then tf.lite if present.

The hub uses this same wrapper to measure how well the exported model agrees with Keras, so what
it reports is what the edge will run.
"""

from __future__ import annotations

import enum
import importlib
from typing import Any

import numpy as np

from shared.scoring import Head


class Quantization(enum.StrEnum):
    """How an exported model is quantised (what the bundle's quantization.mode may say)."""

    INT8 = "int8"  # full integer: int8 weights and activations inside the graph
    FLOAT16 = "float16"
    DYNAMIC = "dynamic"  # int8 weights, float activations
    FLOAT32 = "float32"


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
    """A loaded TFLite model: float windows ``(b, w, f)`` in, a float array per head out.

    Heads are matched to the model's outputs by shape: the reconstruction is the 3-D output, the
    prediction or probability the 2-D one.  Handles int8/float16/float32 models alike: inputs are
    quantised and outputs dequantised with the tensors' own parameters.  Not thread-safe: use one
    instance per scoring thread.
    """

    def __init__(self, model_content: bytes, heads: list[Head] | None = None, runtime: Runtime = Runtime.AUTO,
                 num_threads: int = 1) -> None:
        cls, self.runtime = interpreter_class(runtime)
        self.heads = heads or [Head.RECONSTRUCTION, Head.PREDICTION]
        self._interp = cls(model_content=model_content, num_threads=num_threads)
        self._interp.allocate_tensors()
        self._input = self._interp.get_input_details()[0]
        if len(self._input["shape"]) != 3:
            raise ValueError("model input must be (batch, window, features)")
        self.window = int(self._input["shape"][1])
        self.n_features = int(self._input["shape"][2])
        self.input_dtype = np.dtype(self._input["dtype"])
        self._batch = int(self._input["shape"][0])
        self._outputs = self._match(self._interp.get_output_details())

    def _match(self, outputs: list[dict[str, Any]]) -> dict[Head, dict[str, Any]]:
        by_rank: dict[int, list[dict[str, Any]]] = {}
        for o in outputs:
            by_rank.setdefault(len(o["shape"]), []).append(o)
        want = {Head.RECONSTRUCTION: 3, Head.PREDICTION: 2, Head.PROBABILITY: 2}
        if len(outputs) != len(self.heads) or any(len(by_rank.get(want[h], [])) != 1 for h in self.heads):
            shapes = [list(o["shape"]) for o in outputs]
            raise ValueError(f"model outputs {shapes} do not match heads {[h.value for h in self.heads]}")
        matched = {h: by_rank[want[h]][0] for h in self.heads}
        if Head.RECONSTRUCTION in matched and list(matched[Head.RECONSTRUCTION]["shape"][1:]) != [self.window, self.n_features]:
            raise ValueError("reconstruction output must have the input's shape")
        if Head.PREDICTION in matched and int(matched[Head.PREDICTION]["shape"][1]) != self.n_features:
            raise ValueError("prediction output must have one value per feature")
        return matched

    def _resize(self, batch: int) -> None:
        if batch != self._batch:
            self._interp.resize_tensor_input(self._input["index"], [batch, self.window, self.n_features])
            self._interp.allocate_tensors()
            self._input = self._interp.get_input_details()[0]
            outs = {o["index"]: o for o in self._interp.get_output_details()}
            self._outputs = {h: outs[d["index"]] for h, d in self._outputs.items()}
            self._batch = batch

    def _quantise(self, x: np.ndarray) -> np.ndarray:
        if self.input_dtype in (np.int8, np.uint8):
            scale, zero = self._input["quantization"]
            info = np.iinfo(self.input_dtype)
            q = np.divide(x, scale)  # np.round(x / scale + zero) in one array (the same float32 operations)
            np.add(q, zero, out=q)
            np.round(q, out=q)
            # np.clip's Python wrapper costs more than the work on a few windows; the same values.
            return np.minimum(np.maximum(q, info.min, out=q), info.max, out=q).astype(self.input_dtype)
        return x.astype(self.input_dtype)

    def _dequantise(self, raw: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
        if np.dtype(detail["dtype"]) in (np.int8, np.uint8):
            scale, zero = detail["quantization"]
            out = np.subtract(raw, zero, dtype=np.float32)  # (raw.astype(float32) - zero) * scale, one array
            return np.multiply(out, scale, out=out)
        return raw.astype(np.float32)

    def _invoke(self, x: np.ndarray) -> None:
        """One interpreter call on already quantised input."""
        self._resize(x.shape[0])
        self._interp.set_tensor(self._input["index"], x)
        self._interp.invoke()

    def predict(self, windows: np.ndarray) -> dict[Head, np.ndarray]:
        """(b, w, f) float windows → {head: float array}."""
        x = np.asarray(windows, dtype=np.float32)
        self._invoke(self._quantise(x))
        return {h: self._dequantise(self._interp.get_tensor(d["index"]), d) for h, d in self._outputs.items()}

    def predict_batched(self, windows: np.ndarray, batch: int = 256,
                        buckets: tuple[int, ...] = ()) -> dict[Head, np.ndarray]:
        """Every window, at most ``batch`` per interpreter call: the input is quantised and the outputs
        dequantised once for all calls (the same numbers as ``predict`` per chunk).  With ``buckets``, a
        short call is padded up to the next bucket size, so the interpreter re-allocates its tensors for a
        few batch sizes rather than for every queue length."""
        x = self._quantise(np.asarray(windows, dtype=np.float32))
        n = len(x)
        raw = {h: np.empty((n, *(int(v) for v in d["shape"][1:])), dtype=d["dtype"]) for h, d in self._outputs.items()}
        for s in range(0, n, batch):
            chunk = x[s : s + batch]
            m = len(chunk)
            size = next((b for b in buckets if b >= m), m)
            if buckets and m < buckets[min(1, len(buckets) - 1)] and self._batch == buckets[0] == 1:
                # A few windows (single readings arriving together): one call each at batch 1, where the
                # interpreter already is; padding to the next bucket would re-allocate its tensors twice.
                for i in range(m):
                    self._invoke(chunk[i : i + 1])
                    for h, d in self._outputs.items():
                        raw[h][s + i] = self._interp.get_tensor(d["index"])[0]
                continue
            self._invoke(chunk if size == m else np.concatenate([chunk, np.repeat(chunk[-1:], size - m, axis=0)]))
            for h, d in self._outputs.items():
                raw[h][s : s + m] = self._interp.get_tensor(d["index"])[:m]
        return {h: self._dequantise(raw[h], self._outputs[h]) for h in self._outputs}
