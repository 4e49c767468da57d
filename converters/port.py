"""The one port pipeline: lint -> enforce -> export -> port weights into an existing model.

``port_model`` is used by the API (``port_weights``), ``parity check`` and ``parity port``.
The target's parametric layers, in forward order, are matched to the graph's parametric
nodes by kind, shape and name (``converters.match``). What an exporter or optimiser folded
(a BatchNorm into the preceding convolution, an embedding lookup at constant positions into
its rows) is ported inference-equivalently and marked as such, in structured fields of each
LayerPort (``reason``, ``folded_batchnorm``, ``folded_into``).
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from converters.arguments import check_built, check_runs, input_list, model_framework
from converters.errors import WeightMappingError
from converters.graph import Graph, fold, load_onnx
from converters.match import CONV_LIKE, Matcher, mismatch, shape_text
from converters.params import ParamGroup, param_groups
from converters.report import (
    FOLDED_BATCHNORM,
    FOLDED_INTO,
    FOLDED_LOOKUP,
    FOLDED_STATISTICS,
    LSTM_SINGLE_BIAS,
    LayerPort,
    PortReport,
)
from converters.rules.attention import unfuse_attention
from converters.safety import check_nonfinite_weights, nonfinite_weights_allowed
from converters.targets import TargetLayer, framework_of, target_layers


def _folded_batchnorm(target: TargetLayer, conv_bias: np.ndarray | None) -> dict[str, np.ndarray | None]:
    """An identity BatchNorm (gamma 1, mean 0, var 1-eps) carrying a folded conv bias as beta."""
    c = target.shapes["gamma"][0]  # type: ignore[index]
    eps = float(target.hyper["epsilon"])
    return {"gamma": np.ones(c, np.float32), "beta": conv_bias if conv_bias is not None else np.zeros(c, np.float32),
            "mean": np.zeros(c, np.float32), "var": np.full(c, 1.0 - eps, np.float32)}


def _warnings(target: TargetLayer, group: ParamGroup, folded_bn: bool) -> list[str]:
    """What a person should know about how ``group`` was written into ``target``."""
    out = []
    if target.shapes.get("bias") is not None and group.tensors.get("bias") is None and not folded_bn:
        out.append(f"{target.name}: the graph has no bias for {group.label} (exporters drop all-zero biases); "
                   "set to zero")
    if group.attrs.get("moved_scale", 1.0) != 1.0:
        out.append(f"{target.name}: ONNX Runtime folded a scale of {group.attrs['moved_scale']:g} from the "
                   f"activations around {group.label} into it; the weights are ported without it (the target "
                   "computes that scale in its own activation)")
    if group.attrs.get("flatten_unknown"):
        out.append(f"{target.name}: {group.label} reads a reshaped tensor whose shape ONNX shape inference could "
                   "not tell; if it is a flattened feature map, its rows were copied in the graph's order "
                   "(CHW/HWC not checked)")
    return out


def port_graph(graph: Graph, targets: list[TargetLayer], source: str, framework: str) -> PortReport:
    """Write the graph's parameter groups into ``targets`` (forward order) and report each layer."""
    groups = param_groups(graph)
    if not any(t.kind == "attention" for t in targets):
        groups = unfuse_attention(groups)  # the target spells attention out with dense layers
    report = PortReport(source=source, target_framework=framework, unfolded=dict(graph.unfolded))
    match = Matcher(graph, groups, targets)
    reserved: dict[int, ParamGroup] = {}  # target index -> the BatchNorm group found for it
    folded: dict[int, tuple[ParamGroup, np.ndarray | None]] = {}  # target index -> (conv group, bias for beta)
    for i, target in enumerate(targets):
        if i in folded:
            group, bias = folded.pop(i)
            target.write(_folded_batchnorm(target, bias), {})
            report.layers.append(LayerPort(
                target.name, "batchnorm", group.nodes, "identity (gamma 1, mean 0, var 1-eps)"
                + (", beta = folded bias" if bias is not None else ""), "inference-only",
                "statistics were folded into the preceding layer by the exporter; export losslessly to keep them",
                reason=FOLDED_INTO, folded_into=targets[i - 1].name))
            continue
        lookup = False
        if i in reserved:
            group = reserved.pop(i)
            tensors = match.claim(group, target)
        else:
            group, tensors, lookup = match.take(target)
        nxt = targets[i + 1] if i + 1 < len(targets) else None
        folded_bn = False
        if target.kind in CONV_LIKE and nxt is not None and nxt.kind == "batchnorm":
            found = match.batchnorm_after(group, nxt, targets[i + 1:])
            if isinstance(found, ParamGroup):
                reserved[i + 1] = found
            else:
                folded_bn = found
        bias_for_bn = None
        if folded_bn and target.shapes.get("bias") is None:
            bias_for_bn, tensors["bias"] = tensors.get("bias"), None
        elif target.shapes.get("bias") is None and tensors.get("bias") is not None and np.any(tensors["bias"]):
            raise mismatch(target, group, "the source layer has a non-zero bias but the target layer has none")
        report.warnings.extend(_warnings(target, group, folded_bn))
        folded_stats = bool(group.attrs.get("folded_statistics"))
        if folded_stats:  # x*scale+shift: variance 1-eps makes the target's division by sqrt(var+eps) exact
            tensors["var"] = np.full(target.shapes["var"][0], 1.0 - float(target.hyper["epsilon"]), np.float32)  # type: ignore[index]
        transform = target.write(tensors, group.attrs)
        layer = LayerPort(target.name, target.kind, group.nodes, transform, "exact")
        if folded_bn and nxt is not None:
            layer = replace(layer, status="inference-only", reason=FOLDED_BATCHNORM, folded_batchnorm=nxt.name,
                            note=f"BatchNorm {nxt.name!r} was folded into this layer by the exporter")
            folded[i + 1] = (group, bias_for_bn)
        elif lookup:
            n = int(np.prod(group.tensors["value"].shape[:-1]))  # type: ignore[union-attr]
            layer = replace(layer, status="inference-only", reason=FOLDED_LOOKUP,
                            transform=f"rows 0..{n - 1} from the folded lookup",
                            note=f"the exporter folded this lookup at constant positions into its first {n} rows; "
                                 f"rows {n}.. are not in the graph and were left as they were (the graph only "
                                 "takes sequences of its own length); export losslessly or unsimplified to keep them")
        elif folded_stats:
            layer = replace(layer, status="inference-only", reason=FOLDED_STATISTICS,
                            note="the exporter folded mean/variance into a per-channel scale and shift; "
                                 "ported as gamma/beta")
        elif target.kind == "lstm" and framework == "torch":
            b = group.tensors["B"]
            gates = b.shape[1] // 2  # type: ignore[union-attr]
            if not np.any(b[:, gates:]):  # type: ignore[index]
                layer = replace(layer, status="inference-only", reason=LSTM_SINGLE_BIAS,
                                note="the source has one bias per gate (Keras); torch's b_ih carries it and b_hh "
                                     "is zero, so training moves the sum twice as fast")
        report.layers.append(layer)
        for name in group.sources:
            report.consumed_initializers[name] = report.consumed_initializers.get(name, 0) + 1
    if match.remaining:
        extra = match.remaining[0]
        last = targets[-1].name if targets else "(none)"
        raise WeightMappingError(
            f"first mismatching layer: ONNX {extra.label} [{shape_text(extra.shapes())}] has no counterpart in "
            f"the target (its parametric layers end at {last!r}): the source has more layers than the target"
        )
    report.warnings.extend(match.notes)
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
    check_nonfinite_weights(graph.consts, graph.initializers, str(path))
    layers = target_layers(target, target_inputs)
    return port_graph(graph, layers, str(path), framework_of(target))


def port_model(
    source: Any,
    target: Any,
    source_inputs: Sequence[np.ndarray],
    target_inputs: Sequence[np.ndarray] | None = None,
    *,
    onnx_path: str | Path | None = None,
    exporter: str = "dynamo",
    lossless: bool = False,
    strict: bool = False,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
    allow_nonfinite: bool | None = None,
) -> PortReport:
    """The one port pipeline: lint -> enforce -> export -> port; ``target`` is modified in place.

    ``source``: a torch.nn.Module, a keras.Model, or a path to an .onnx file (then it is
    ported as it is: no lint, no export). ``source_inputs``: numpy arrays in the source's
    own layout (used to export, and to trace a torch source's layer order).
    ``target_inputs``: the same in the target's layout; with them, a torch target's layer
    order is traced from a forward pass instead of registration order.
    ``onnx_path``: where to keep the exported file (a temporary file otherwise).
    ``lossless``: export so that BatchNorm statistics survive (torch exporters only;
    tf2onnx always folds them, see ``converters.export.LOSSLESS_SUPPORT``; from a Keras source they
    are restored from the source itself, ``converters.restore_batchnorm``).
    ``strict``: a semantic-defaults disagreement (epsilon, momentum, GELU form, ...)
    raises :class:`converters.lint.SemanticMismatchError` before anything is exported;
    otherwise the findings are in the report's ``lint``.
    ``input_names``/``output_names``: the exported graph's (``input_k``/``output_k`` by default).
    ``progress``: called with one line per step (each finding, the export, the port).
    ``allow_nonfinite``: port weights holding NaN/Inf instead of raising ``NonFiniteWeightsError``
    (None: as the enclosing ``converters.safety.nonfinite_weights_allowed`` says; default refuse).
    """
    say = progress or (lambda message: None)
    with nonfinite_weights_allowed(allow_nonfinite) if allow_nonfinite is not None else nullcontext():
        if isinstance(source, (str, Path)):
            say(f"porting the weights in {Path(source).name} into the {framework_of(target)} model")
            return port_onnx(source, target, input_list(target_inputs, "target_inputs"))
        return _port_model(source, target, source_inputs, target_inputs, onnx_path=onnx_path, exporter=exporter,
                           lossless=lossless, strict=strict, input_names=input_names, output_names=output_names,
                           say=say)


def _port_model(source: Any, target: Any, source_inputs: Any, target_inputs: Any, *, onnx_path: str | Path | None,
                exporter: str, lossless: bool, strict: bool, input_names: Sequence[str] | None,
                output_names: Sequence[str] | None, say: Callable[[str], None]) -> PortReport:
    from converters.export import export_model
    from converters.lint import enforce, lint_models

    src_fw, dst_fw = model_framework(source, "source"), model_framework(target, "target")
    if src_fw == dst_fw:
        raise WeightMappingError(f"source and target are both {src_fw} models; port between frameworks")
    source_inputs = input_list(source_inputs, "example_inputs")
    target_inputs = input_list(target_inputs, "target_inputs")
    check_runs(source, source_inputs, "source", "example_inputs")
    if target_inputs is not None:
        check_runs(target, target_inputs, "target", "target_inputs")
    else:
        check_built(target, "target")
    findings = lint_models(source, target, source_inputs if src_fw == "torch" else None, target_inputs)
    for finding in findings:
        say(f"semantic mismatch: {finding.message}")
    enforce(findings, strict)
    names_in = list(input_names) if input_names is not None else [f"input_{k}" for k in range(len(source_inputs))]
    names_out = list(output_names) if output_names is not None else _output_names(source)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(onnx_path) if onnx_path else Path(tmp) / "source.onnx"
        say(f"exporting it to ONNX ({exporter if src_fw == 'torch' else 'tf2onnx'}"
            f"{', lossless' if lossless and src_fw == 'torch' else ''})")
        export_model(source, src_fw, source_inputs, path, input_names=names_in, output_names=names_out,
                     exporter=exporter, lossless=lossless)
        say(f"porting its weights into the {dst_fw} twin through {path.name}")
        report = port_onnx(path, target, target_inputs)
    if src_fw == "tf":  # tf2onnx folded the BatchNorms: their statistics are still in the source
        from converters.restore_batchnorm import restore_batchnorm

        restored = restore_batchnorm(source, target, report)
        if restored:
            say(f"restored {len(restored)} BatchNorm(s) the export had folded, from the Keras source")
    report.lint = list(findings)
    return report


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
    allow_nonfinite: bool | None = None,
) -> PortReport:
    """Move ``source``'s weights into ``target`` (modified in place) through ONNX: :func:`port_model`.

    ``example_inputs``: a list of numpy arrays, one per input, in the source's own layout (used to export).
    """
    return port_model(source, target, example_inputs, target_inputs, onnx_path=onnx_path, exporter=exporter,
                      lossless=lossless, strict=strict, allow_nonfinite=allow_nonfinite)


def _output_names(model: Any) -> list[str]:
    if framework_of(model) == "tf":
        return [f"output_{k}" for k in range(len(model.outputs))]
    return ["output_0"]
