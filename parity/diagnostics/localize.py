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
before it is compared, and a Keras layer's fused activation (``Dense(activation=...)``)
is applied to the other runtimes' values of that layer, which stop before it.

Tolerances grow with depth: the given tolerance (the spec's, relative to each
activation's scale) is the budget at the output, after all D compared layers. float32
rounding from different summation orders is independent from layer to layer and adds
up like a random walk, so layer d of D gets ``tol * sqrt(d / D)``: the same safety
margin over the expected rounding at every depth, and exactly the output check's
tolerance at the last layer. ``strict=True`` takes the tolerance as given at every layer.
"""

from __future__ import annotations

import math
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from parity.compare import Comparison, compare
from parity.errors import UsageError

LABELS = ("torch", "tf", "ort-torch", "ort-tf")
_CHANNELS_FIRST_TORCH = ("Conv", "ConvTranspose", "BatchNorm", "MaxPool", "AvgPool", "AdaptiveAvgPool",
                         "AdaptiveMaxPool", "InstanceNorm", "Upsample", "PixelShuffle", "ZeroPad", "Dropout2d")
_FUSED_ACTIVATION_KERAS = ("Dense", "EinsumDense", "Conv1D", "Conv2D", "Conv3D", "DepthwiseConv2D",
                           "SeparableConv2D", "Conv1DTranspose", "Conv2DTranspose")
_RNN_KERAS = ("LSTM", "GRU", "SimpleRNN", "RNN", "Bidirectional")
_ACTIVATION_OPS = {"Relu", "Sigmoid", "Tanh", "Clip", "Elu", "LeakyRelu", "Softmax", "HardSigmoid", "Gelu",
                   "Softplus", "Selu", "HardSwish"}
_NCHW_OPS = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "BatchNormalization", "GlobalAveragePool",
             "GlobalMaxPool", "InstanceNormalization", "LRN"}
_ELEMENTWISE_OPS = {"Add", "Mul", "Sub", "Div", "Relu", "Clip", "Sigmoid", "Tanh", "Identity", "Cast"} | _ACTIVATION_OPS


# ----------------------------------------------------------------------------- tolerance


@dataclass(frozen=True)
class DepthTolerance:
    """Per-layer tolerance: ``atol`` relative to each activation's scale (or absolute), ``rtol``."""

    atol: float
    rtol: float
    reason: str
    scale_relative: bool = True
    strict: bool = False

    def factor(self, depth: int, total: int) -> float:
        """How much of the given tolerance layer ``depth`` (1-based) of ``total`` gets."""
        if self.strict or total <= 0:
            return 1.0
        return math.sqrt(max(depth, 1) / total)

    def at(self, depth: int, total: int, scale: float) -> tuple[float, float]:
        f = self.factor(depth, total)
        atol = self.atol * f * (scale if self.scale_relative else 1.0)
        return atol, self.rtol * f

    def describe(self) -> dict[str, Any]:
        growth = ("taken as given at every layer (strict)" if self.strict else
                  "the given tolerance is the budget after all D compared layers; layer d gets tol * sqrt(d / D): "
                  "float32 rounding from different summation orders is independent per layer and accumulates "
                  "like a random walk (see NUMERICS.md, 'Expected float32 gaps'), so every depth keeps the same "
                  "margin over the expected rounding and the last layer gets the output check's tolerance")
        return {"atol": self.atol, "rtol": self.rtol, "scale_relative": self.scale_relative,
                "strict": self.strict, "growth": growth, "reason": self.reason}


def depth_tolerance(tolerance: Any, *, strict: bool = False, atol: float | None = None,
                    rtol: float | None = None, tf32: bool = False) -> DepthTolerance:
    """The per-layer policy from a spec ``Tolerance`` (scale-relative) or explicit --atol/--rtol (as given)."""
    if atol is not None or rtol is not None:
        a = atol if atol is not None else tolerance.absolute(1.0)
        r = rtol if rtol is not None else tolerance.rtol
        return DepthTolerance(a, r, "given on the command line; taken as given at every layer",
                              scale_relative=atol is None and tolerance.scale_relative, strict=True)
    a, r, reason = tolerance.atol, tolerance.rtol, tolerance.reason
    if tf32:  # TF32 keeps 10 mantissa bits (unit roundoff 4.9e-4)
        a, r, reason = max(a, 1e-3), max(r, 1e-3), reason + "; widened to 1e-3 for TF32"
    return DepthTolerance(a, r, reason, scale_relative=tolerance.scale_relative, strict=strict)


# ----------------------------------------------------------------------------- results


@dataclass
class LayerRow:
    """One aligned layer: its activations in every runtime that exposes it, compared to the reference."""

    index: int
    layer: str
    torch: str | None
    keras: str | None
    kind: str
    shape: list[int]
    depth: int = 0
    scale: float = 0.0
    atol: float = 0.0
    rtol: float = 0.0
    max_abs: float = 0.0
    max_rel: float = 0.0
    passed: bool = True
    reference: str = ""
    comparisons: list[Comparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def relative_error(self) -> float:
        """max |a - b| over the activation's scale (what the plot shows)."""
        return self.max_abs / self.scale if self.scale > 0 else self.max_abs

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "comparisons"}
        d["relative_error"] = self.relative_error
        d["comparisons"] = [{"a": c.a, "b": c.b, "max_abs": c.max_abs, "max_rel": c.max_rel,
                             "passed": c.passed, "over_tolerance": c.over_tolerance,
                             "worst_index": list(c.worst_index) if c.worst_index else None,
                             "problem": c.problem} for c in self.comparisons]
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


@dataclass
class LayerReport:
    reference: str
    rows: list[LayerRow]
    tolerance: DepthTolerance
    first_divergence: str | None = None
    suspects: list[str] = field(default_factory=list)  # twin-less torch modules run just before it
    ort: dict[str, dict[str, Any]] = field(default_factory=dict)
    unmatched: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    @property
    def first_row(self) -> LayerRow | None:
        return next((r for r in self.rows if not r.passed), None)

    def to_dict(self) -> dict[str, Any]:
        first = self.first_row
        return {"reference": self.reference, "passed": self.passed, "first_divergence": self.first_divergence,
                "first_divergence_detail": first.to_dict() if first else None, "suspects": self.suspects,
                "tolerance": self.tolerance.describe(), "rows": [r.to_dict() for r in self.rows],
                "ort": self.ort, "unmatched": self.unmatched, "notes": self.notes}

    def format(self, limit: int | None = None) -> str:
        head = f"  {'#':>3}  {'layer':<52}{'kind':<18}{'max_abs':>10}{'rel_err':>10}{'max_rel':>10}{'atol':>10}  verdict"
        lines = [f"layer-by-layer (reference {self.reference}; {len(self.rows)} layers)", head]
        rows = self.rows
        if limit is not None and len(rows) > limit:
            first = self.first_row
            keep = set(range(limit)) | ({first.index} if first else set())
            rows = [r for r in rows if r.index in keep]
        for r in rows:
            mark = "skip" if not r.depth else ("ok" if r.passed else "FAIL")
            lines.append(f"  {r.index:>3}  {r.layer[:51]:<52}{r.kind[:17]:<18}{r.max_abs:>10.2e}"
                         f"{r.relative_error:>10.2e}{r.max_rel:>10.2e}{r.atol:>10.2e}  {mark}")
        if self.first_divergence:
            row = self.first_row
            assert row is not None
            worst = max(row.comparisons, key=lambda c: c.max_abs if math.isfinite(c.max_abs) else math.inf)
            lines.append(f"first layer over tolerance: {self.first_divergence} ({worst.explain()})")
            if self.suspects:
                lines.append(f"  ran between it and the last agreeing layer, without a twin to compare: "
                             f"{', '.join(self.suspects)}")
        else:
            lines.append("every layer within tolerance")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- capture


@dataclass
class Capture:
    values: dict[str, np.ndarray]
    order: list[str]  # completion order (torch) or layer order (Keras)
    kinds: dict[str, str]
    rnn: set[str] = field(default_factory=set)
    channels_first: set[str] = field(default_factory=set)  # torch modules whose output is channels-first
    calls: dict[str, int] = field(default_factory=dict)
    leaves: set[str] = field(default_factory=set)  # torch modules without children
    activation: dict[str, Callable[[np.ndarray], np.ndarray]] = field(default_factory=dict)
    unflatten: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # Dense -> Reshape((H, W, C))


def _to_numpy_torch(out: Any, module: Any) -> np.ndarray | None:
    import torch
    from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

    while isinstance(out, (tuple, list)) and out:  # (output, state); PackedSequence is a tuple too
        if isinstance(out, PackedSequence):
            out = pad_packed_sequence(out, batch_first=bool(getattr(module, "batch_first", False)))[0]
        else:
            out = out[0]
    if not isinstance(out, torch.Tensor) or not out.is_floating_point():
        return None
    return out.detach().float().cpu().numpy().copy()


def capture_torch(model: Any, inputs: Sequence[np.ndarray]) -> Capture:
    """Every named module's output at its first call, in completion order."""
    from torch import nn

    from converters.torch_hooks import run_with_hooks

    cap = Capture({}, [], {})
    hooked = []

    def hook(name: str) -> Callable[..., None]:
        def record(module: Any, args: Any, out: Any) -> None:
            cap.calls[name] = cap.calls.get(name, 0) + 1
            if name in cap.values:
                return
            value = _to_numpy_torch(out, module)
            if value is not None:
                cap.values[name] = value
                cap.order.append(name)
        return record

    for name, module in model.named_modules():
        if not name:
            continue
        cls = type(module).__name__
        cap.kinds[name] = cls
        if not any(True for _ in module.children()):
            cap.leaves.add(name)
        if isinstance(module, nn.RNNBase):
            cap.rnn.add(name)
        if cls.startswith(_CHANNELS_FIRST_TORCH) or isinstance(module, (nn.modules.conv._ConvNd,
                                                                        nn.modules.batchnorm._BatchNorm)):
            cap.channels_first.add(name)
        hooked.append((name, module))
    run_with_hooks(model, inputs, hooked, hook)
    return cap


def capture_keras(model: Any, inputs: Sequence[np.ndarray]) -> Capture:
    """Every layer's output (first call) through probes over intermediate outputs; nested models recursed."""
    cap = Capture({}, [], {})
    _probe_keras(model, list(inputs), cap)
    return cap


def _probe_keras(model: Any, inputs: list[Any], cap: Capture) -> None:
    import keras

    out_of = keras.Operation.output.fget  # the base property: the tensor of the layer's first call
    in_of = keras.Operation.input.fget
    probes: list[tuple[str, Any]] = []
    nested: list[Any] = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        try:
            out = out_of(layer)
        except (AttributeError, ValueError):  # never called in this graph
            continue
        if isinstance(out, (list, tuple)):
            out = out[0]
        cls = type(layer).__name__
        cap.kinds[layer.name] = cls
        if cls in _RNN_KERAS:
            cap.rnn.add(layer.name)
        act = getattr(layer, "activation", None)
        if cls in _FUSED_ACTIVATION_KERAS and act is not None and act is not keras.activations.linear:
            cap.activation[layer.name] = _numpy_activation(act)
        probes.append((layer.name, out))
        if isinstance(layer, keras.Model):
            probes.append((f"\0in:{layer.name}", in_of(layer)))
            nested.append(layer)
    if not probes:
        return
    for layer in model.layers:  # a Dense whose output is reshaped into an (H, W, C) map orders it HWC
        if isinstance(layer, keras.layers.Reshape) and len(layer.target_shape) == 3:
            src = in_of(layer)
            for dense in model.layers:
                if isinstance(dense, keras.layers.Dense) and out_of(dense) is src:
                    cap.unflatten[dense.name] = tuple(int(d) for d in layer.target_shape)  # type: ignore[assignment]
    probe = keras.Model(model.inputs, [t for _, t in probes])
    results = probe(list(inputs), training=False)
    results = results if isinstance(results, (list, tuple)) else [results]
    fed: dict[str, Any] = {}
    for (name, _), value in zip(probes, results, strict=True):
        if name.startswith("\0in:"):
            fed[name[4:]] = value
            continue
        array = np.asarray(keras.ops.convert_to_numpy(value))
        if np.issubdtype(array.dtype, np.floating) and name not in cap.values:
            cap.values[name] = array.astype(np.float32)
            cap.order.append(name)
    for layer in nested:
        inner = fed[layer.name]
        _probe_keras(layer, list(inner) if isinstance(inner, (list, tuple)) else [inner], cap)


def _numpy_activation(fn: Callable[[Any], Any]) -> Callable[[np.ndarray], np.ndarray]:
    import keras

    def apply(x: np.ndarray) -> np.ndarray:
        return np.asarray(keras.ops.convert_to_numpy(fn(keras.ops.convert_to_tensor(x))), dtype=np.float32)

    apply.__name__ = getattr(fn, "__name__", "activation")
    return apply


# ----------------------------------------------------------------------------- ONNX tracing


@dataclass(frozen=True)
class OrtTensor:
    tensor: str
    via: str  # "port mapping" or "module scope"
    post_activation: bool = False
    channels_first: bool = True


def _node_label(node: Any) -> str:
    return node.name or f"{node.op_type}({node.output[0]})"


def _legacy_scope(name: str) -> str:
    """'/layer1/layer1.0/conv1/Conv' -> 'layer1.0.conv1' (torch legacy exporter node names)."""
    parts = [p for p in name.split("/")[1:-1] if p]
    path = ""
    for part in parts:
        path = part if not path or part.startswith(path + ".") else f"{path}.{part}"
    return path


def torch_scope_of(node: Any) -> str:
    """The torch module path a node of a torch export belongs to ('' for the root)."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            import ast

            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return ""
            return str(scopes[-2]) if len(scopes) >= 2 else ""
    return _legacy_scope(node.name) if node.name.startswith("/") else ""


def _producers(model: Any) -> dict[str, Any]:
    return {o: n for n in model.graph.node for o in n.output if o}


def _is_channels_first(tensor: str, producers: dict[str, Any]) -> bool:
    node = producers.get(tensor)
    while node is not None and node.op_type in _ELEMENTWISE_OPS and node.input:
        node = producers.get(node.input[0])
    return node is not None and node.op_type in _NCHW_OPS


def scope_tensors(model: Any, modules: set[str]) -> dict[str, OrtTensor]:
    """For a torch export: each module's output tensor (the last tensor leaving its subtree)."""
    nodes = list(model.graph.node)
    scopes = [torch_scope_of(n) for n in nodes]
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for t in n.input:
            consumers.setdefault(t, []).append(i)
    outputs = {o.name for o in model.graph.output}
    found: dict[str, OrtTensor] = {}
    for module in modules:
        inside = [i for i, s in enumerate(scopes) if s == module or s.startswith(module + ".")]
        member = set(inside)
        exits = [(i, t) for i in inside for t in nodes[i].output[:1]
                 if nodes[i].op_type not in ("Constant", "Shape") and t
                 and (t in outputs or any(c not in member for c in consumers.get(t, [])))]
        if exits:
            i, t = exits[-1]
            found[module] = OrtTensor(t, "module scope", nodes[i].op_type in _ACTIVATION_OPS)
    return found


def port_tensors(model: Any, layers: Sequence[Mapping[str, Any]]) -> dict[str, tuple[OrtTensor, list[str]]]:
    """Target layer -> (the tensor its ONNX nodes produce, those nodes), from the port report.

    Layers that share their nodes (a BatchNorm folded into the conv before it) get the
    tensor on the last of them: it is that layer's output, not the first one's.
    """
    nodes = list(model.graph.node)
    position = {_node_label(n): i for i, n in enumerate(nodes)}
    producers = _producers(model)
    consumers: dict[str, list[Any]] = {}
    for n in nodes:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    found: dict[str, tuple[OrtTensor, list[str]]] = {}
    owner: dict[tuple[str, ...], str] = {}
    for layer in layers:
        names = [n for n in layer.get("onnx_nodes", []) if n in position]
        if not names:
            continue
        last = nodes[max(position[n] for n in names)]
        key = tuple(sorted(names))
        if key in owner:
            found.pop(owner[key], None)
        owner[key] = layer["target"]
        tensor = last.output[-1] if last.op_type == "Loop" else last.output[0]  # a Loop's scan output is last
        if layer.get("kind") in ("layernorm", "groupnorm") and not any(
                nodes[position[n]].op_type.endswith("Normalization") for n in names):
            # tf2onnx's decomposition: y = x * inv + (beta - mean * inv); the group ends at the
            # (beta - mean * inv) node and y is the Add that consumes it
            users = consumers.get(tensor, [])
            if len(users) != 1 or users[0].op_type != "Add":
                continue
            last, tensor = users[0], users[0].output[0]
        found[layer["target"]] = (OrtTensor(tensor, "port mapping", last.op_type in _ACTIVATION_OPS,
                                            _is_channels_first(tensor, producers)), names)
    return found


def source_layer_of(model: Any, node_names: Sequence[str], framework: str, known: set[str]) -> str | None:
    """The source framework's layer that produced these ONNX nodes, when the exporter recorded it."""
    by_name = {_node_label(n): n for n in model.graph.node}
    for name in reversed(list(node_names)):
        node = by_name.get(name)
        if node is None:
            continue
        if framework == "torch":
            scope = torch_scope_of(node)
            while scope and scope not in known:
                scope = scope.rpartition(".")[0]
            if scope:
                return scope
        else:  # tf2onnx: "<model>_1/<layer>_1/op..."; Keras appends _<n> to its name scopes
            for part in name.split("/")[1:-1] or name.split("/")[:1]:
                for candidate in (part, part.rsplit("_", 1)[0]):
                    if candidate in known:
                        return candidate
    return None


@dataclass
class OrtCapture:
    values: dict[str, np.ndarray]
    optimized: set[str]
    info: dict[str, Any]
    outputs: list[np.ndarray] = field(default_factory=list)  # the final outputs of the session with extra outputs


def capture_ort(path: str | Path, feeds: Sequence[np.ndarray], tensors: Mapping[str, str],
                threads: int | None = None) -> OrtCapture:
    """Read ``tensors`` (key -> tensor name) from ONNX Runtime as extra graph outputs.

    A session with the check's options (full graph optimisation) reads the tensors its
    optimiser keeps; its final outputs are compared bit for bit with a session without
    extra outputs. Tensors fused away are read from an unoptimised session.
    """
    import onnx
    import onnxruntime as ort

    from parity.runners.ort_runner import session_options

    model = onnx.load(str(path))
    names = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if len(names) != len(feeds):
        raise UsageError(f"{path}: the graph takes {len(names)} inputs ({names}), {len(feeds)} were given")
    feed = dict(zip(names, [np.ascontiguousarray(f) for f in feeds], strict=True))
    final = [o.name for o in model.graph.output]
    providers = ["CPUExecutionProvider"]
    with tempfile.TemporaryDirectory(prefix="parity-ort-") as tmp:
        opts = session_options(threads)
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        plain = ort.InferenceSession(str(path), opts, providers=providers)
        kept = {o for n in onnx.load(opts.optimized_model_filepath).graph.node for o in n.output}
    baseline = plain.run(final, feed)
    wanted = {k: t for k, t in tensors.items() if t not in final}
    survivors = {k: t for k, t in wanted.items() if t in kept}
    fused = {k: t for k, t in wanted.items() if t not in kept}
    values: dict[str, np.ndarray] = {k: baseline[final.index(t)] for k, t in tensors.items() if t in final}

    def run(selected: dict[str, str], optimize: bool) -> list[np.ndarray]:
        extra = list(dict.fromkeys(selected.values()))
        aug = onnx.load(str(path))
        aug.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in extra)
        sess = ort.InferenceSession(aug.SerializeToString(), session_options(threads, optimize), providers=providers)
        out = sess.run(final + extra, feed)
        for k, t in selected.items():
            values[k] = out[len(final) + extra.index(t)]
        return out[:len(final)]

    identical, max_diff, got = True, 0.0, baseline
    if survivors:
        got = run(survivors, True)
        identical = all(np.array_equal(a, b, equal_nan=True) for a, b in zip(got, baseline, strict=True))
        max_diff = max(float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0
                       for a, b in zip(got, baseline, strict=True))
    if fused:
        run(fused, False)
    info = {"file": str(path), "observed": len(values), "optimized_session": len(survivors),
            "unoptimized_session": sorted(set(fused.values())), "outputs_identical": identical, "max_output_difference": max_diff}
    return OrtCapture(values, set(survivors) | {k for k, t in tensors.items() if t in final}, info, list(got))


# ----------------------------------------------------------------------------- layouts


def _permute_candidates(value: np.ndarray, channels_last_first: bool) -> list[tuple[str, np.ndarray]]:
    r = value.ndim
    out: list[tuple[str, np.ndarray]] = []
    cl = ("channels-last -> channels-first", value.transpose(0, r - 1, *range(1, r - 1))) if r >= 3 else None
    if channels_last_first and cl:
        out.append(cl)
    out.append(("as is", value))
    if cl and not channels_last_first:
        out.append(cl)
    if r == 3:
        out.append(("time-major -> batch-first", value.transpose(1, 0, 2)))
    if cl and r >= 3:
        out.append(("channels-first -> channels-last", value.transpose(0, *range(2, r), 1)))
    if r == 4:  # ONNX RNN Y: (L, dirs, B, H) -> (B, L, dirs*H)
        out.append(("ONNX RNN (L, dirs, B, H) -> (B, L, dirs*H)",
                    value.transpose(2, 0, 1, 3).reshape(value.shape[2], value.shape[0], -1)))
    return out


def to_layout(value: np.ndarray, shape: tuple[int, ...], channels_last_first: bool) -> tuple[np.ndarray, str] | None:
    """``value`` rearranged to ``shape`` by the first layout transform that fits, and which one."""
    for how, cand in _permute_candidates(value, channels_last_first):
        if cand.shape == shape:
            return np.ascontiguousarray(cand), how
        if cand.ndim == len(shape) and cand.shape[0] == 1 and cand.shape[1:] == shape[1:]:
            return np.ascontiguousarray(np.broadcast_to(cand, shape)), how + ", batch broadcast"
        if (cand.ndim == len(shape) >= 3 and cand.shape[0] == shape[0] and cand.shape[2:] == shape[2:]
                and cand.shape[1] < shape[1]):  # a packed sequence unpacked to its longest length
            pad = [(0, 0)] * cand.ndim
            pad[1] = (0, shape[1] - cand.shape[1])
            return np.pad(cand, pad), how + ", zero-padded in time"
    return None


# ----------------------------------------------------------------------------- alignment


@dataclass
class _Pair:
    torch: str | None
    keras: str | None
    port_target: str | None = None


def _align(tcap: Capture, kcap: Capture, port: Sequence[Mapping[str, Any]], source_names: dict[str, str | None],
           target: str) -> list[_Pair]:
    """Pairs by name first (plus a stacked torch RNN with its last Keras layer), then by the port mapping."""
    pairs: list[_Pair] = []
    for name in tcap.order:
        k = name if name in kcap.values else None
        if k is None and name in tcap.rnn:
            stacked = sorted((n for n in kcap.values if n.startswith(name + ".l") and n[len(name) + 2:].isdigit()),
                             key=lambda n: int(n[len(name) + 2:]))
            k = stacked[-1] if stacked else None
        if k is not None:
            pairs.append(_Pair(name, k))
    for layer in port:
        tgt, src = layer["target"], source_names.get(layer["target"])
        t_name, k_name = (tgt, src) if target == "torch" else (src, tgt)
        t_name = t_name if t_name in tcap.values else None
        k_name = k_name if k_name in kcap.values else None
        tgt_side = t_name if target == "torch" else k_name
        existing = next((p for p in pairs if tgt_side is not None
                         and (p.torch if target == "torch" else p.keras) == tgt_side), None)
        if existing is not None:
            existing.port_target = existing.port_target or tgt
            continue
        if target == "torch" and any(p.keras == k_name for p in pairs):
            k_name = None  # the source layer is already twinned (a stacked RNN's last layer)
        if target == "tf" and any(p.torch == t_name for p in pairs):
            t_name = None
        if t_name is None and k_name is None:
            continue
        pairs.append(_Pair(t_name, k_name, tgt))
    t_pos = {n: i for i, n in enumerate(tcap.order)}
    k_pos = {n: i for i, n in enumerate(kcap.order)}

    def key(p: _Pair) -> tuple[float, float]:
        if p.torch is not None:
            return float(t_pos[p.torch]), 0.0
        # a Keras-only row goes just before the first torch-paired row that follows it in Keras order
        after = [t_pos[q.torch] for q in pairs if q.torch is not None and q.keras is not None
                 and k_pos.get(q.keras, -1) > k_pos.get(p.keras or "", -1)]
        return (min(after) - 0.5 if after else math.inf), float(k_pos.get(p.keras or "", 0))

    return sorted(pairs, key=key)


# ----------------------------------------------------------------------------- the entry point


def localize(torch_model: Any, keras_model: Any, torch_inputs: Sequence[np.ndarray],
             keras_inputs: Sequence[np.ndarray], *, tolerance: DepthTolerance, reference: str = "torch",
             port: Any = None, onnx_files: Mapping[str, str | Path] | None = None,
             mask: np.ndarray | None = None, threads: int | None = None) -> LayerReport:
    """Compare the twins (and ONNX Runtime) layer by layer; see the module docstring.

    ``torch_inputs`` and ``keras_inputs`` are the same batch in each framework's layout,
    in the models' input order. ``port``: the PortReport (or its dict) of the port that
    made one twin from the other; its source framework's ONNX file must be in
    ``onnx_files`` ({"torch": path, "tf": path}, either optional) for the port mapping to
    give ONNX Runtime tensors. ``mask`` (B, L): pad steps of recurrent layers are zeroed
    in every runtime before comparing (torch's packed sequences and Keras's masked
    RNNs leave different values there, which no valid output depends on).
    """
    import onnx

    if reference not in ("torch", "tf"):
        raise UsageError(f"reference must be 'torch' or 'tf', got {reference!r}")
    port_dict = port.to_dict() if hasattr(port, "to_dict") else (port or {})
    port_layers: list[Mapping[str, Any]] = list(port_dict.get("layers", []))
    target = port_dict.get("target_framework")
    source = {"torch": "tf", "tf": "torch"}.get(target or "")
    onnx_files = dict(onnx_files or {})

    tcap = capture_torch(torch_model, torch_inputs)
    kcap = capture_keras(keras_model, keras_inputs)
    notes: list[str] = []
    source_names: dict[str, str | None] = {}
    ort_values: dict[str, dict[tuple[str, str], np.ndarray]] = {}
    ort_meta: dict[str, dict[tuple[str, str], OrtTensor]] = {}
    ort_info: dict[str, dict[str, Any]] = {}
    ort_optimized: dict[str, set[tuple[str, str]]] = {}
    models: dict[str, Any] = {fw: onnx.load(str(p)) for fw, p in onnx_files.items()}

    requests: dict[str, dict[tuple[str, str], OrtTensor]] = {fw: {} for fw in models}
    if source in models and port_layers:
        known = set(tcap.values if source == "torch" else kcap.values)
        mapped = port_tensors(models[source], port_layers)
        for tgt, (tensor, _nodes) in mapped.items():
            requests[source][("port", tgt)] = tensor
        for layer in port_layers:
            source_names[layer["target"]] = source_layer_of(models[source], layer.get("onnx_nodes", []), source, known)
    if "torch" in models:
        for module, tensor in scope_tensors(models["torch"], set(tcap.values)).items():
            requests["torch"][("scope", module)] = tensor
    elif port_layers and source is None:
        notes.append("the port report names no target framework; ONNX Runtime values are left out")
    for fw, reqs in requests.items():
        if not reqs:
            continue
        feeds = torch_inputs if fw == "torch" else keras_inputs
        got = capture_ort(onnx_files[fw], feeds, {f"{a}\0{b}": t.tensor for (a, b), t in reqs.items()}, threads)
        label = f"ort-{fw}"
        ort_values[label] = {tuple(k.split("\0", 1)): v for k, v in got.values.items()}  # type: ignore[misc]
        ort_optimized[label] = {tuple(k.split("\0", 1)) for k in got.optimized}  # type: ignore[misc]
        ort_meta[label] = reqs
        ort_info[label] = got.info
    if "tf" in models and source != "tf":
        notes.append("ort-tf is not localised: tf2onnx renames and fuses nodes, so only a port from the tf "
                     "twin (its port report) traces them back to layers")

    pairs = _align(tcap, kcap, port_layers, source_names, target or "tf")
    folded = {layer["target"]: m.group(1) for layer in port_layers
              if (m := re.search(r"BatchNorm '(.+?)' was folded into this layer", layer.get("note", "")))}
    built = [b for p in pairs if (b := _row(p, tcap, kcap, ort_values, ort_meta, ort_optimized, reference, mask,
                                            folded.get((p.torch if target == "torch" else p.keras) or "")))]
    rows: list[LayerRow] = []
    first: LayerRow | None = None
    total, depth = sum(1 for _, v in built if v), 0
    for index, (row, values) in enumerate(built, start=1):
        depth += bool(values)
        row.index, row.depth = index, depth if values else 0
        _judge(row, values, tolerance, depth, total)
        rows.append(row)
        if first is None and not row.passed:
            first = row
    paired_t = {p.torch for p in pairs}
    paired_k = {p.keras for p in pairs}
    report = LayerReport(reference=reference, rows=rows, tolerance=tolerance, ort=ort_info, notes=notes,
                         unmatched={"torch": [n for n in tcap.order if n not in paired_t],
                                    "tf": [n for n in kcap.order if n not in paired_k]})
    if first is not None:
        report.first_divergence = first.layer
        report.suspects = _suspects(rows, first, tcap, paired_t)
    return report


def _row(p: _Pair, tcap: Capture, kcap: Capture, ort_values: dict[str, dict[tuple[str, str], np.ndarray]],
         ort_meta: dict[str, dict[tuple[str, str], OrtTensor]], ort_optimized: dict[str, set[tuple[str, str]]],
         reference: str, mask: np.ndarray | None, folded: str | None = None
         ) -> tuple[LayerRow, dict[str, np.ndarray]] | None:
    """The row of one pair and its values (torch layout), or None when fewer than two runtimes show it."""
    notes: list[str] = []
    values: dict[str, np.ndarray] = {}
    t_val = tcap.values.get(p.torch) if p.torch else None
    k_val = kcap.values.get(p.keras) if p.keras else None
    hwc = kcap.unflatten.get(p.keras or "") if t_val is not None else None

    def chw(v: np.ndarray) -> np.ndarray:  # Keras's HWC-ordered features in torch's CHW order
        assert hwc is not None
        return np.ascontiguousarray(v.reshape(v.shape[0], *hwc).transpose(0, 3, 1, 2).reshape(v.shape[0], -1))

    if k_val is not None and hwc is not None and k_val.ndim == 2 and k_val.shape[1] == int(np.prod(hwc)):
        k_val = chw(k_val)
        notes.append(f"Keras reshapes this layer's output to (H, W, C) = {hwc}: features reordered to C, H, W")
    if t_val is not None and k_val is not None and t_val.shape[0] == 1 < k_val.shape[0]:
        t_val = np.broadcast_to(t_val, (k_val.shape[0], *t_val.shape[1:]))  # computed once for the batch
        notes.append(f"torch computes this once for the batch; broadcast to {k_val.shape[0]}")
    if t_val is not None:
        values["torch"] = t_val
    common = t_val.shape if t_val is not None else (k_val.shape if k_val is not None else None)
    channels_first_module = p.torch in tcap.channels_first if p.torch else False
    if k_val is not None and common is not None:
        prefer = k_val.ndim >= 4 or channels_first_module
        moved = to_layout(k_val, common, prefer) if t_val is not None else (k_val, "as is")
        if moved is None:
            notes.append(f"tf activation {k_val.shape} cannot be brought to the torch layout {common}")
        else:
            values["tf"] = moved[0]
            if moved[1] != "as is":
                notes.append(f"tf: {moved[1]}")
    for label, by_key in ort_values.items():
        key = None
        if p.torch and ("scope", p.torch) in by_key:
            key = ("scope", p.torch)
        elif p.port_target and ("port", p.port_target) in by_key:
            key = ("port", p.port_target)
        if key is None or common is None:
            continue
        meta = ort_meta[label][key]
        prefer = label == "ort-tf" and not meta.channels_first
        moved = to_layout(by_key[key], common, prefer)
        if moved is None:
            notes.append(f"{label} tensor {meta.tensor} {by_key[key].shape} does not fit {common}")
            continue
        value = moved[0]
        if label == "ort-tf" and hwc is not None and value.ndim == 2 and value.shape[1] == int(np.prod(hwc)):
            value = chw(value)
        if p.keras in kcap.activation and not meta.post_activation:
            value = kcap.activation[p.keras](value)
        values[label] = value
        if key not in ort_optimized.get(label, set()):
            notes.append(f"{label}: {meta.tensor} is fused away by ORT's optimiser; read from an unoptimised session")
    if "torch" in values and p.keras in kcap.activation:
        fn = kcap.activation[p.keras]
        values["torch"] = fn(values["torch"])
        notes.append(f"Keras fuses {fn.__name__} into this layer; applied to the other runtimes' values")
    if mask is not None and ((p.torch in tcap.rnn) or (p.keras in kcap.rnn)):
        for label, v in values.items():
            if v.ndim >= 2 and v.shape[:2] == mask.shape:
                values[label] = v * mask.reshape(*mask.shape, *([1] * (v.ndim - 2))).astype(v.dtype)
        notes.append("pad steps zeroed (recurrent layer: packed/masked steps carry no valid output)")
    if len(values) < 2:
        return None
    if folded is not None:  # the port put the BatchNorm's scale into this layer's weights
        notes.append(f"not compared: the exporter folded BatchNorm {folded!r} into this layer, so the port made "
                     f"it inference-equivalent only (its output is compared at {folded!r})")
        values = {}
    ref_label = reference if reference in values else ("torch" if "torch" in values else next(iter(values), ""))
    if p.torch and tcap.calls.get(p.torch, 1) > 1:
        notes.append(f"torch module called {tcap.calls[p.torch]} times; compared at its first call")
    kind = tcap.kinds.get(p.torch or "", "") or kcap.kinds.get(p.keras or "", "")
    name = p.torch if p.torch == p.keras or p.keras is None else (p.keras if p.torch is None else
                                                                  f"{p.torch} <-> {p.keras}")
    row = LayerRow(index=0, layer=str(name), torch=p.torch, keras=p.keras, kind=kind,
                   shape=list(values[ref_label].shape) if values else [], reference=ref_label, notes=notes)
    row.scale = float(np.max(np.abs(values[ref_label]))) if values and values[ref_label].size else 0.0
    return row, values


def _judge(row: LayerRow, values: dict[str, np.ndarray], tol: DepthTolerance, depth: int, total: int) -> None:
    if not values:  # not comparable (see its notes)
        return
    row.atol, row.rtol = tol.at(depth, total, row.scale)
    ref = values[row.reference]
    row.comparisons = [compare(v, ref, atol=row.atol, rtol=row.rtol, a=label, b=row.reference, output=row.layer)
                       for label, v in values.items() if label != row.reference]
    finite = [c for c in row.comparisons if c.problem is None]
    row.max_abs = max((c.max_abs for c in finite), default=math.inf if row.comparisons else 0.0)
    row.max_rel = max((c.max_rel for c in finite), default=math.inf if row.comparisons else 0.0)
    row.passed = all(row.comparisons)


def _suspects(rows: list[LayerRow], first: LayerRow, tcap: Capture, paired: set[str | None]) -> list[str]:
    """Torch modules without a twin that finished between the last agreeing row and ``first``."""
    if first.torch is None:
        return []
    end = tcap.order.index(first.torch)
    before = [r for r in rows[: first.index - 1] if r.torch is not None and r.passed and r.depth]
    start = tcap.order.index(before[-1].torch) + 1 if before else 0
    return [f"{n} ({tcap.kinds.get(n, '?')})" for n in tcap.order[start:end] if n not in paired and n in tcap.leaves]
