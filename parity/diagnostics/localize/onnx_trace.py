"""ONNX Runtime's intermediate tensors: which tensor is which layer's output, and reading them unchanged.

Tensors are traced back to layers by the port report's ``onnx_nodes`` (the graph the
weights came from) and, for torch exports, by the exporter's module scopes (node metadata
``pkg.torch.onnx.name_scopes``, or legacy node names ``/block/conv/Conv``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from converters.codegen.naming import torch_scope_of
from converters.report import LayerPort
from parity.errors import UsageError

_ACTIVATION_OPS = {"Relu", "Sigmoid", "Tanh", "Clip", "Elu", "LeakyRelu", "Softmax", "HardSigmoid", "Gelu",
                   "Softplus", "Selu", "HardSwish"}
_NCHW_OPS = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "BatchNormalization", "GlobalAveragePool",
             "GlobalMaxPool", "InstanceNormalization", "LRN"}
_ELEMENTWISE_OPS = {"Add", "Mul", "Sub", "Div", "Relu", "Clip", "Sigmoid", "Tanh", "Identity", "Cast"} | _ACTIVATION_OPS


@dataclass(frozen=True)
class OrtTensor:
    tensor: str
    via: str  # "port mapping" or "module scope"
    post_activation: bool = False
    channels_first: bool = True


def _node_label(node: Any) -> str:
    return node.name or f"{node.op_type}({node.output[0]})"


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


def port_tensors(model: Any, layers: Sequence[LayerPort]) -> dict[str, tuple[OrtTensor, list[str]]]:
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
        names = [n for n in layer.onnx_nodes if n in position]
        if not names:
            continue
        last = nodes[max(position[n] for n in names)]
        if layer.kind == "tensor" and last.op_type in ("Expand", "Tile"):
            continue  # a learned tensor broadcast over the batch (a class token) is not yet the layer's output
        key = tuple(sorted(names))
        if key in owner:
            found.pop(owner[key], None)
        owner[key] = layer.target
        tensor = last.output[-1] if last.op_type == "Loop" else last.output[0]  # a Loop's scan output is last
        if layer.kind in ("layernorm", "groupnorm") and not any(
                nodes[position[n]].op_type.endswith("Normalization") for n in names):
            # tf2onnx's decomposition: y = x * inv + (beta - mean * inv); the group ends at the
            # (beta - mean * inv) node and y is the Add that consumes it
            users = consumers.get(tensor, [])
            if len(users) != 1 or users[0].op_type != "Add":
                continue
            last, tensor = users[0], users[0].output[0]
        found[layer.target] = (OrtTensor(tensor, "port mapping", last.op_type in _ACTIVATION_OPS,
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
                threads: int | None = None, providers: Sequence[Any] | None = None,
                input_names: Sequence[str] | None = None) -> OrtCapture:
    """Read ``tensors`` (key -> tensor name) from ONNX Runtime as extra graph outputs.

    A session with the check's options (full graph optimisation) reads the tensors its
    optimiser keeps; its final outputs are compared bit for bit with a session without
    extra outputs. Tensors fused away are read from an unoptimised session. ``providers``:
    ONNX Runtime's execution providers (default: the CPU), as the check's runner used them.
    ``input_names``: the name of each feed; ONNX Runtime is fed by name (without them, the
    feeds are taken in the graph's input order).
    """
    import onnx
    import onnxruntime as ort

    from parity.runners.ort_runner import session_options

    model = onnx.load(str(path))
    names = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    given = list(input_names) if input_names is not None else names
    if len(given) != len(feeds) or sorted(given) != sorted(names):
        raise UsageError(f"{path}: the graph's inputs are {names}; {len(feeds)} were given"
                         + (f", named {given}" if input_names is not None else ""))
    feed = dict(zip(given, [np.ascontiguousarray(f) for f in feeds], strict=True))
    final = [o.name for o in model.graph.output]
    providers = list(providers or ["CPUExecutionProvider"])
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
