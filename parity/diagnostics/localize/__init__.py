"""Layer-by-layer localisation: where do two twins (and ONNX Runtime) start to disagree?

The activation after every named layer is captured in each runtime:

- torch: a forward hook on every named module (its first call);
- Keras: a ``keras.Model`` over the layers' intermediate outputs; a nested model
  (a ``keras.Sequential`` shortcut) gets a second probe over its own layers, fed
  with what flowed into it; a layer called more than once is seen at its first call;
- ONNX Runtime: intermediate tensors added as extra graph outputs. They are traced
  back to layers by the port report's ``onnx_nodes`` (the graph the weights came
  from) and, for torch exports, by the exporter's module scopes (node metadata
  ``pkg.torch.onnx.name_scopes``, or legacy node names ``/block/conv/Conv``). Tensors
  that ORT's optimiser keeps are read from a session with the same options as the
  check's, whose final outputs are verified to be bit-identical to a session without
  the extra outputs; tensors the optimiser fuses away are read from an unoptimised
  session and marked so.

Rows are aligned by layer name (zoo twins share names; a stacked torch RNN ``lstm``
is twinned by its last Keras layer ``lstm.l{n-1}``) and otherwise through the port
report's mapping. Every value is brought to the torch layout (NCHW, NCL, batch-first)
before it is compared. A Keras layer's fused activation (``Dense(activation=...)``) is its
own step, never copied from one side to the other: the layer's row compares Keras's value
before the activation (the layer called again with it switched off) with the other runtimes',
and the next row, ``layer +act``, compares Keras's value after it with what the torch twin
feeds the Keras consumer's twin (or returns as the model output). That row shares its
layer's depth. A row passes when every element has ``|a - b| <= atol + rtol * |b|``; its
``ratio`` is the worst element's ``|a - b| / (atol + rtol * |b|)``, shown in the table and plot.

Tolerances grow with depth: the given tolerance (the spec's, relative to each
activation's scale) is the budget at the output, after all D compared layers. float32
rounding from different summation orders is independent from layer to layer and adds
up like a random walk, so layer d of D gets ``tol * sqrt(d / D)``: the same safety
margin over the expected rounding at every depth, and exactly the output check's
tolerance at the last layer. ``strict=True`` takes the tolerance as given at every layer.

Modules, in the order the work happens: ``capture`` (torch hooks, Keras probes),
``onnx_trace`` (which ORT tensor is which layer's output; reading them unchanged),
``layouts`` (values to the torch layout), ``alignment`` (pairing layers),
``tolerance`` (the depth policy), ``results`` (rows and the report) and ``table``
(the entry point, ``localize``).
"""

from parity.diagnostics.localize.capture import Capture, capture_keras, capture_torch
from parity.diagnostics.localize.layouts import to_layout
from parity.diagnostics.localize.onnx_trace import (
           OrtCapture,
           OrtTensor,
           capture_ort,
           port_tensors,
           scope_tensors,
)
from parity.diagnostics.localize.results import LayerReport, LayerRow
from parity.diagnostics.localize.table import localize
from parity.diagnostics.localize.tolerance import DepthTolerance, depth_tolerance

__all__ = ["Capture", "DepthTolerance", "LayerReport", "LayerRow", "OrtCapture", "OrtTensor", "capture_keras",
           "capture_ort", "capture_torch", "depth_tolerance", "localize", "port_tensors", "scope_tensors",
           "to_layout"]
