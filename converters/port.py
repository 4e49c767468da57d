"""Port weights from an ONNX graph into an existing model of the other framework.

The target's parametric layers, in forward order, are matched to the graph's
parametric nodes by kind and shape. BatchNorm that an exporter folded into the
preceding convolution is ported inference-equivalently and marked as such.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from converters.errors import WeightMappingError
from converters.graph import Graph, fold, load_onnx
from converters.params import ParamGroup, param_groups
from converters.report import LayerPort, PortReport
from converters.rules.attention import unfuse_attention
from converters.targets import TargetLayer, framework_of, target_layers


def _shape_text(shapes: dict[str, Any]) -> str:
    return ", ".join(f"{k} {tuple(v) if v is not None else None}" for k, v in shapes.items())


def _mismatch(target: TargetLayer, group: ParamGroup | None, why: str) -> WeightMappingError:
    there = f"ONNX {group.label} [{_shape_text(group.shapes())}]" if group else "no ONNX parametric node left"
    return WeightMappingError(
        f"first mismatching layer: target {target.framework} layer {target.name!r} ({target.kind}: "
        f"{_shape_text(target.shapes)}) vs {there}: {why}. Check that the two models are the same "
        "architecture with the same sizes, in the same layer order"
    )


def _folded_batchnorm(target: TargetLayer, conv_bias: np.ndarray | None) -> dict[str, np.ndarray | None]:
    """An identity BatchNorm (gamma 1, mean 0, var 1-eps) carrying a folded conv bias as beta."""
    c = target.shapes["gamma"][0]  # type: ignore[index]
    eps = float(target.hyper["epsilon"])
    return {"gamma": np.ones(c, np.float32), "beta": conv_bias if conv_bias is not None else np.zeros(c, np.float32),
            "mean": np.zeros(c, np.float32), "var": np.full(c, 1.0 - eps, np.float32)}


def _adapt(target: TargetLayer, group: ParamGroup) -> tuple[dict[str, np.ndarray | None] | None, str]:
    """The group's tensors shaped for ``target``, or None and the reason they do not fit."""
    if group.kind != target.kind:
        return None, f"expected a {target.kind} layer"
    tensors = dict(group.tensors)
    w = tensors.get("weight")
    want_w = target.shapes.get("weight")
    if w is not None and want_w is not None and w.ndim == len(want_w) + 1 and w.shape[2] == 1:
        tensors["weight"] = w.squeeze(2)  # tf2onnx writes Conv1D as a 4-D Conv over (1, L)
    for key, want in target.shapes.items():
        have = tensors.get(key)
        if key == "bias" and (want is None or have is None):
            continue  # absent biases are handled by the writers (zeros, or folded into BatchNorm)
        if key == "var" and have is None and group.attrs.get("folded_statistics"):
            continue
        if want is None or have is None or tuple(have.shape) != tuple(want):
            return None, f"{key} shape {None if have is None else tuple(have.shape)} was expected to be {want}"
    return tensors, ""


def _take(target: TargetLayer, remaining: list[ParamGroup]) -> tuple[ParamGroup, dict[str, np.ndarray | None]]:
    """The first remaining group (in graph order) that fits ``target``.

    Graph order and the target's forward order agree for sequential models; for
    branches (shortcuts) a later group of the right kind and shapes is taken instead.
    """
    for group in remaining:
        tensors, _ = _adapt(target, group)
        if tensors is not None:
            remaining.remove(group)
            return group, tensors
    same_kind = next((g for g in remaining if g.kind == target.kind), None)
    first = same_kind or (remaining[0] if remaining else None)
    why = _adapt(target, first)[1] if first is not None else ""
    raise _mismatch(target, first, why or f"expected a {target.kind} layer")


def port_graph(graph: Graph, targets: list[TargetLayer], source: str, framework: str) -> PortReport:
    groups = param_groups(graph)
    if not any(t.kind == "attention" for t in targets):
        groups = unfuse_attention(groups)  # the target spells attention out with dense layers
    report = PortReport(source=source, target_framework=framework)
    remaining = list(groups)
    folded: dict[int, tuple[ParamGroup, np.ndarray | None]] = {}  # target index -> (conv group, bias for beta)
    for i, target in enumerate(targets):
        if i in folded:
            group, bias = folded.pop(i)
            target.write(_folded_batchnorm(target, bias), {})
            report.layers.append(LayerPort(
                target.name, "batchnorm", group.nodes, "identity (gamma 1, mean 0, var 1-eps)"
                + (", beta = folded bias" if bias is not None else ""), "inference-only",
                "statistics were folded into the preceding layer by the exporter; export losslessly to keep them"))
            continue
        group, tensors = _take(target, remaining)
        nxt = targets[i + 1] if i + 1 < len(targets) else None
        folded_bn = (target.kind in ("conv", "dense", "convtranspose") and nxt is not None
                     and nxt.kind == "batchnorm" and not group.attrs.get("norm_follows", True))
        bias_for_bn = None
        if folded_bn and target.shapes.get("bias") is None:
            bias_for_bn, tensors["bias"] = tensors.get("bias"), None
        elif target.shapes.get("bias") is None and tensors.get("bias") is not None and np.any(tensors["bias"]):
            raise _mismatch(target, group, "the source layer has a non-zero bias but the target layer has none")
        if target.shapes.get("bias") is not None and group.tensors.get("bias") is None and not folded_bn:
            report.warnings.append(f"{target.name}: the graph has no bias for {group.label} "
                                   "(exporters drop all-zero biases); set to zero")
        folded_stats = bool(group.attrs.get("folded_statistics"))
        if folded_stats:  # x*scale+shift: variance 1-eps makes the target's division by sqrt(var+eps) exact
            tensors["var"] = np.full(target.shapes["var"][0], 1.0 - float(target.hyper["epsilon"]), np.float32)  # type: ignore[index]
        transform = target.write(tensors, group.attrs)
        status, note = "exact", ""
        if folded_bn and nxt is not None:
            status, note = "inference-only", f"BatchNorm {nxt.name!r} was folded into this layer by the exporter"
            folded[i + 1] = (group, bias_for_bn)
        elif folded_stats:
            status = "inference-only"
            note = "the exporter folded mean/variance into a per-channel scale and shift; ported as gamma/beta"
        elif target.kind == "lstm" and framework == "torch":
            b = group.tensors["B"]
            gates = b.shape[1] // 2  # type: ignore[union-attr]
            if not np.any(b[:, gates:]):  # type: ignore[index]
                status = "inference-only"
                note = ("the source has one bias per gate (Keras); torch's b_ih carries it and b_hh is zero, "
                        "so training moves the sum twice as fast")
        report.layers.append(LayerPort(target.name, target.kind, group.nodes, transform, status, note))
        for name in group.sources:
            report.consumed_initializers[name] = report.consumed_initializers.get(name, 0) + 1
    if remaining:
        extra = remaining[0]
        last = targets[-1].name if targets else "(none)"
        raise WeightMappingError(
            f"first mismatching layer: ONNX {extra.label} [{_shape_text(extra.shapes())}] has no counterpart in "
            f"the target (its parametric layers end at {last!r}): the source has more layers than the target"
        )
    _account_initializers(graph, report)
    return report


def _account_initializers(graph: Graph, report: PortReport) -> None:
    users: dict[str, Counter[str]] = {}
    for node in graph.nodes:
        for inp in node.input:
            for init in graph.provenance.get(inp, ()):
                users.setdefault(init, Counter())[node.op_type] += 1
    for name in graph.initializers:
        if name in report.consumed_initializers:
            continue
        ops = users.get(name)
        if ops:
            report.unused_initializers[name] = f"structural constant (shape, index or scalar) used by {', '.join(sorted(ops))}"
        else:
            report.unused_initializers[name] = "not used by any node left after constant folding"


def port_onnx(path: str | Path, target: Any, target_inputs: Sequence[np.ndarray] | None = None) -> PortReport:
    """Port the weights in the ONNX file ``path`` into ``target`` (modified in place)."""
    graph = fold(load_onnx(path))
    layers = target_layers(target, target_inputs)
    return port_graph(graph, layers, str(path), framework_of(target))


def port_weights(
    source: Any,
    target: Any,
    example_inputs: Sequence[np.ndarray],
    *,
    exporter: str = "dynamo",
    lossless: bool = False,
    strict: bool = False,
    target_inputs: Sequence[np.ndarray] | None = None,
    onnx_path: str | Path | None = None,
) -> PortReport:
    """Move ``source``'s weights into ``target`` (modified in place) through ONNX.

    ``source``: a torch.nn.Module, a keras.Model, or a path to an .onnx file.
    ``example_inputs``: numpy arrays in the source's own layout (used to export).
    ``lossless``: export so that BatchNorm statistics survive (torch exporters only;
    tf2onnx always folds them, see ``converters.export.LOSSLESS_SUPPORT``).
    ``strict``: a semantic-defaults disagreement (epsilon, momentum, GELU form, ...)
    between two model objects raises instead of being reported.
    ``target_inputs``: the inputs in the target's layout; with them, a torch target's
    layer order is traced from a forward pass instead of registration order.
    ``onnx_path``: where to keep the exported file (a temporary file otherwise).
    """
    if isinstance(source, (str, Path)):
        return port_onnx(source, target, target_inputs)
    from converters.export import export_model
    from converters.lint import enforce, lint_models

    src_fw = framework_of(source)
    if src_fw == framework_of(target):
        raise WeightMappingError(f"source and target are both {src_fw} models; port between frameworks")
    findings = lint_models(source, target, example_inputs if src_fw == "torch" else None, target_inputs)
    enforce(findings, strict)
    names_in = [f"input_{k}" for k in range(len(example_inputs))]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(onnx_path) if onnx_path else Path(tmp) / "source.onnx"
        export_model(source, src_fw, example_inputs, path, input_names=names_in, output_names=_output_names(source),
                     exporter=exporter, lossless=lossless)
        report = port_onnx(path, target, target_inputs)
    report.lint = [f.to_dict() for f in findings]
    report.warnings.extend(f"semantic mismatch: {f.message}" for f in findings)
    return report


def _output_names(model: Any) -> list[str]:
    if framework_of(model) == "tf":
        return [f"output_{k}" for k in range(len(model.outputs))]
    return ["output_0"]
