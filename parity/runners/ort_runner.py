"""ONNX Runtime runner: a session over an .onnx file (or its bytes), fed by input name."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort

from parity.errors import DeviceUnavailableError, RunnerInputError
from parity.runners.base import Runner


def session_options(threads: int | None, optimize: bool = True) -> ort.SessionOptions:
    """Quiet session options with ``threads`` intra-op threads (no spinning) and full or no graph optimisation."""
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
    """The execution providers for ``device`` ('auto', 'cpu', 'cuda'); CUDA without onnxruntime-gpu is an error."""
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
    """An ONNX Runtime session. Inputs are fed by name: the names given to ``prepare`` (default: the
    graph's) must be the graph's input names, in any order. Outputs are fetched by name when the
    names given are the graph's, else taken in graph order and labelled with the names given."""

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
        self.device_type = self.device_used
        self.settings.update({"provider": used, "tf32": self.precision == "tf32" and self.device_used == "cuda",
                              "intra_op_threads": self.threads, "graph_optimization": self.optimize})
        if not self.input_names:
            self.input_names = [i.name for i in self.session.get_inputs()]
        if not self.output_names:
            self.output_names = [o.name for o in self.session.get_outputs()]
        self.graph_inputs = [i.name for i in self.session.get_inputs()]
        self.graph_outputs = [o.name for o in self.session.get_outputs()]

    def _bind(self) -> None:
        unknown = [n for n in self.input_names if n not in self.graph_inputs]
        missing = [n for n in self.graph_inputs if n not in self.input_names]
        if unknown or missing:
            raise RunnerInputError(
                f"ort runner: the ONNX graph's inputs are {self.graph_inputs}; the inputs given are {self.input_names} "
                f"(not in the graph: {unknown}, not given: {missing}); ONNX Runtime is fed by name, so name the "
                "inputs as the graph does"
            )
        by_name = sorted(self.output_names) == sorted(self.graph_outputs)
        self.fetch = list(self.output_names) if by_name else list(self.graph_outputs)

    def _run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        feeds = dict(zip(self.input_names, inputs, strict=True))
        return list(self.session.run(self.fetch, feeds))
