"""ONNX Runtime runner."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort

from parity.errors import DeviceUnavailableError
from parity.runners.base import Runner


def session_options(threads: int | None, optimize: bool = True) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: graph-optimiser warnings (CastLike, unused initializers) are noise here
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    # Spinning worker threads steal cycles from the other frameworks in the process.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    return opts


def providers_for(device: str, precision: str) -> list[Any]:
    available = ort.get_available_providers()
    if device == "auto":
        device = "cuda" if "CUDAExecutionProvider" in available else "cpu"
    if device == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise DeviceUnavailableError(
                f"ort: --device cuda needs onnxruntime-gpu (CUDAExecutionProvider); available: {available}"
            )
        return [("CUDAExecutionProvider", {"use_tf32": "1" if precision == "tf32" else "0"}),
                "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OrtRunner(Runner):
    name = "ort"

    def __init__(self, *args: Any, optimize: bool = True, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.optimize = optimize

    def _prepare(self, model: Any) -> None:
        """``model`` is a path to an .onnx file or serialized model bytes."""
        if self.precision in ("fp16", "bf16"):
            raise DeviceUnavailableError(
                f"ort runner: precision {self.precision} needs an ONNX model converted to that type"
            )
        providers = providers_for(self.device, self.precision)
        src = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(src, session_options(self.threads, self.optimize), providers=providers)
        used = self.session.get_providers()[0]
        self.device_used = "cuda" if used == "CUDAExecutionProvider" else "cpu"
        self.settings.update({"provider": used, "tf32": self.precision == "tf32" and self.device_used == "cuda",
                              "intra_op_threads": self.threads, "graph_optimization": self.optimize})
        if not self.input_names:
            self.input_names = [i.name for i in self.session.get_inputs()]
        if not self.output_names:
            self.output_names = [o.name for o in self.session.get_outputs()]
        self._onnx_inputs = [i.name for i in self.session.get_inputs()]
        self._onnx_outputs = [o.name for o in self.session.get_outputs()]

    def _run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        feeds = dict(zip(self._onnx_inputs, inputs, strict=True))
        return list(self.session.run(self._onnx_outputs, feeds))
