"""The entry point: capture every runtime, align the layers, compare them at depth-grown tolerances."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from converters.report import PortReport
from parity.compare import compare
from parity.diagnostics.device import Placement, as_placement, keras_placed, ort_providers, torch_placed
from parity.diagnostics.localize.alignment import Pair, align
from parity.diagnostics.localize.capture import Capture, capture_keras, capture_torch
from parity.diagnostics.localize.layouts import to_layout
from parity.diagnostics.localize.onnx_trace import (
    OrtTensor,
    capture_ort,
    port_tensors,
    scope_tensors,
    source_layer_of,
)
from parity.diagnostics.localize.results import LayerReport, LayerRow
from parity.diagnostics.localize.tolerance import DepthTolerance
from parity.errors import UsageError


def localize(torch_model: Any, keras_model: Any, torch_inputs: Sequence[np.ndarray],
             keras_inputs: Sequence[np.ndarray], *, tolerance: DepthTolerance, reference: str = "torch",
             port: PortReport | None = None, onnx_files: Mapping[str, str | Path] | None = None,
             mask: np.ndarray | None = None, threads: int | None = None,
             device: str | Placement = "cpu",
             input_names: Mapping[str, Sequence[str]] | None = None) -> LayerReport:
    """Compare the twins (and ONNX Runtime) layer by layer; see the package docstring.

    ``torch_inputs`` and ``keras_inputs`` are the same batch in each framework's layout,
    in the models' input order. ``port``: the PortReport of the port that
    made one twin from the other; its source framework's ONNX file must be in
    ``onnx_files`` ({"torch": path, "tf": path}, either optional) for the port mapping to
    give ONNX Runtime tensors. ``mask`` (B, L): pad steps of recurrent layers are zeroed
    in every runtime before comparing (torch's packed sequences and Keras's masked
    RNNs leave different values there, which no valid output depends on). ``device``: where
    each runtime runs ('cpu', 'cuda', or a ``Placement`` per framework, as the check's runners
    ran); the torch twin runs as a copy there when it is elsewhere. ``input_names``: per
    framework ({"torch": [...], "tf": [...]}), the names of its inputs in the order given,
    by which ONNX Runtime is fed (default: the graph's input order).
    """
    import onnx

    if reference not in ("torch", "tf"):
        raise UsageError(f"reference must be 'torch' or 'tf', got {reference!r}")
    port_layers = list(port.layers) if port is not None else []
    target = port.target_framework if port is not None else None
    source = {"torch": "tf", "tf": "torch"}.get(target or "")
    onnx_files = dict(onnx_files or {})

    place = as_placement(device)
    with torch_placed(torch_model, place.torch) as there, keras_placed(place.tf):
        tcap = capture_torch(there, torch_inputs)
        kcap = capture_keras(keras_model, keras_inputs)
    providers = ort_providers(place)
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
            source_names[layer.target] = source_layer_of(models[source], layer.onnx_nodes, source, known)
    if "torch" in models:
        for module, tensor in scope_tensors(models["torch"], set(tcap.values)).items():
            requests["torch"][("scope", module)] = tensor
    for fw, reqs in requests.items():
        if not reqs:
            continue
        feeds = torch_inputs if fw == "torch" else keras_inputs
        got = capture_ort(onnx_files[fw], feeds, {f"{a}\0{b}": t.tensor for (a, b), t in reqs.items()}, threads,
                          providers=providers, input_names=(input_names or {}).get(fw))
        label = f"ort-{fw}"
        ort_values[label] = {tuple(k.split("\0", 1)): v for k, v in got.values.items()}  # type: ignore[misc]
        ort_optimized[label] = {tuple(k.split("\0", 1)) for k in got.optimized}  # type: ignore[misc]
        ort_meta[label] = reqs
        ort_info[label] = got.info
    if "tf" in models and source != "tf":
        notes.append("ort-tf is not localised: tf2onnx renames and fuses nodes, so only a port from the tf "
                     "twin (its port report) traces them back to layers")

    pairs = align(tcap, kcap, port_layers, source_names, target or "tf")
    folded = {layer.target: layer.folded_batchnorm for layer in port_layers if layer.folded_batchnorm}
    built = []
    for p in pairs:
        b = _row(p, tcap, kcap, ort_values, ort_meta, ort_optimized, reference, mask,
                 folded.get((p.torch if target == "torch" else p.keras) or ""))
        if b is not None:
            built.append(b)
            after = _post_row(p, pairs, tcap, kcap, reference, b[0])
            if after is not None:
                built.append(after)
    rows: list[LayerRow] = []
    first: LayerRow | None = None
    total, depth = sum(1 for r, v in built if v and not _is_post(r)), 0
    for index, (row, values) in enumerate(built, start=1):
        depth += bool(values) and not _is_post(row)  # an activation is part of its layer's step in depth
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


def _row(p: Pair, tcap: Capture, kcap: Capture, ort_values: dict[str, dict[tuple[str, str], np.ndarray]],
         ort_meta: dict[str, dict[tuple[str, str], OrtTensor]], ort_optimized: dict[str, set[tuple[str, str]]],
         reference: str, mask: np.ndarray | None, folded: str | None = None
         ) -> tuple[LayerRow, dict[str, np.ndarray]] | None:
    """The row of one pair and its values (torch layout), or None when fewer than two runtimes show it."""
    notes: list[str] = []
    values: dict[str, np.ndarray] = {}
    t_val = tcap.values.get(p.torch) if p.torch else None
    k_val = kcap.values.get(p.keras) if p.keras else None
    fused = p.keras in kcap.activation and p.keras in kcap.pre
    if fused and k_val is not None:  # compared before Keras's fused activation; after it in _post_row
        k_val = kcap.pre[p.keras]
        notes.append(f"Keras fuses {kcap.activation[p.keras].__name__} into this layer: compared before it here, "
                     "after it in the next row")
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
        if fused and meta.post_activation:
            continue  # an ONNX tensor after the fused activation belongs to the post-activation row
        values[label] = value
        if key not in ort_optimized.get(label, set()):
            notes.append(f"{label}: {meta.tensor} is fused away by ORT's optimiser; read from an unoptimised session")
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


POST = " +"  # a fused activation's row: "<layer> +<activation>"


def _is_post(row: LayerRow) -> bool:
    return row.kind.endswith(" activation") and POST in row.layer


def _post_row(p: Pair, pairs: Sequence[Pair], tcap: Capture, kcap: Capture, reference: str,
              pre: LayerRow) -> tuple[LayerRow, dict[str, np.ndarray]] | None:
    """A Keras layer's fused activation as its own step: Keras's output against the torch value that the
    Keras output's consumer reads (its torch twin's input), or the model output it is; never the other
    side's value with this side's activation applied. None when there is no such torch value."""
    if p.keras is None or p.keras not in kcap.pre or p.keras not in kcap.values:
        return None
    k_val = kcap.values[p.keras]
    t_val, source = None, ""
    for user in kcap.consumers.get(p.keras, []):
        twin = next((q.torch for q in pairs if q.keras == user and q.torch), None)
        if twin is not None and twin in tcap.inputs:
            t_val, source = tcap.inputs[twin], f"the input of torch {twin!r} (twin of its consumer {user!r})"
            break
    index = kcap.output_of.get(p.keras)
    if t_val is None and index is not None and index < len(tcap.outputs):
        t_val, source = tcap.outputs[index], f"the torch model's output {index}"
    act = kcap.activation[p.keras].__name__
    if t_val is None:
        pre.notes.append(f"after Keras's fused {act}: not compared (no consumer with a torch twin)")
        return None
    hwc = kcap.unflatten.get(p.keras)
    if hwc is not None and k_val.ndim == 2 and k_val.shape[1] == int(np.prod(hwc)):
        k_val = np.ascontiguousarray(k_val.reshape(k_val.shape[0], *hwc).transpose(0, 3, 1, 2)
                                     .reshape(k_val.shape[0], -1))
    moved = to_layout(k_val, t_val.shape, k_val.ndim >= 4 or (p.torch in tcap.channels_first if p.torch else False))
    if moved is None:
        pre.notes.append(f"after Keras's fused {act}: tf {k_val.shape} does not fit torch {t_val.shape}")
        return None
    values = {"torch": t_val, "tf": moved[0]}
    ref = reference if reference in values else "torch"
    row = LayerRow(index=0, layer=f"{pre.layer}{POST}{act}", torch=p.torch, keras=p.keras,
                   kind=f"{act} activation", shape=list(values[ref].shape), reference=ref,
                   notes=[f"Keras's {act} fused into {p.keras!r}, against {source}"])
    row.scale = float(np.max(np.abs(values[ref]))) if values[ref].size else 0.0
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
    row.ratios = {label: tolerance_ratio(v, ref, row.atol, row.rtol) for label, v in values.items()
                  if label != row.reference}
    row.ratio = max(row.ratios.values(), default=0.0)


def tolerance_ratio(actual: np.ndarray, expected: np.ndarray, atol: float, rtol: float) -> float:
    """max |a - b| / (atol + rtol |b|) over the elements: the one rule, <= 1 exactly when ``compare`` passes
    (inf where the shapes or the non-finite positions differ)."""
    a, b = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if a.shape != b.shape:
        return math.inf
    both = np.isfinite(a) & np.isfinite(b)
    same = ~np.isfinite(a) & ~np.isfinite(b) & ((np.isnan(a) & np.isnan(b)) | (a == b))
    if np.any(~both & ~same):
        return math.inf
    if not np.any(both):
        return 0.0
    diff = np.abs(a[both] - b[both])
    limit = atol + rtol * np.abs(b[both])
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(diff > 0, diff / limit, 0.0)
    return float(np.max(ratio))


def _suspects(rows: list[LayerRow], first: LayerRow, tcap: Capture, paired: set[str | None]) -> list[str]:
    """Torch modules without a twin that finished between the last agreeing row and ``first``."""
    if first.torch is None:
        return []
    end = tcap.order.index(first.torch)
    before = [r for r in rows[: first.index - 1] if r.torch is not None and r.passed and r.depth]
    start = tcap.order.index(before[-1].torch) + 1 if before else 0
    return [f"{n} ({tcap.kinds.get(n, '?')})" for n in tcap.order[start:end] if n not in paired and n in tcap.leaves]
