"""Forward FLOPs from an ONNX graph, and the machine's own matmul peak.

A multiply-add counts as 2 FLOPs (ResNet-50 at 224x224 is ~8.2 GFLOP, not the 4.1
"GFLOPs" of MAC-counting tools). Only the products are counted: Conv, ConvTranspose,
Gemm, MatMul (batched attention products included), Einsum and the recurrent cells;
bias adds, activations and normalisation are left out, as every published count does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Shape = tuple[Any, ...]

# Gates per recurrent cell kind: the rows of W and R are gates * hidden.
_RECURRENT = ("LSTM", "GRU", "RNN")


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one forward pass at ``batch``; ``unresolved`` lists counted-kind nodes without shapes."""

    batch: int
    total: int
    by_op: Mapping[str, int] = field(default_factory=dict)
    counted_nodes: int = 0
    unresolved: tuple[str, ...] = ()

    @property
    def gflop(self) -> float:
        return self.total / 1e9

    @property
    def complete(self) -> bool:
        return not self.unresolved

    def to_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "total": self.total, "gflop": self.gflop, "by_op": dict(self.by_op),
                "counted_nodes": self.counted_nodes, "unresolved": list(self.unresolved)}


@dataclass(frozen=True)
class PeakProbe:
    """Achieved rate of a large square matmul: the practical ceiling for this machine.

    ``gflops`` comes from the fastest run (a peak is what the machine *can* do; a shared
    host's noise only ever slows a run down); ``median_gflops`` from the median.
    """

    gflops: float
    median_gflops: float
    n: int
    dtype: str
    device: str
    median_s: float
    runs: int

    def to_dict(self) -> dict[str, Any]:
        return {"gflops": self.gflops, "median_gflops": self.median_gflops, "n": self.n, "dtype": self.dtype, "device": self.device,
                "median_s": self.median_s, "runs": self.runs}


# ----------------------------------------------------------------------------- counting


def count_flops(model: Any, batch: int, shapes: Mapping[str, Shape] | None = None) -> FlopCount:
    """Count forward FLOPs of ``model`` (a path or an onnx.ModelProto) with batch size ``batch``.

    ``batch`` replaces the symbolic first dimension of each graph input (the batch in zoo
    layouts); inputs exported with a static first dimension keep it. ``shapes`` (by input
    name, without the batch) fix an input's other dimensions, e.g. a dynamic sequence length.
    """
    from converters.graph import fold, load_onnx

    if batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch}")
    proto = load_onnx(model) if isinstance(model, (str, Path)) else model
    graph = fold(_infer_at_batch(proto, batch, shapes or {}))
    by_op: dict[str, int] = {}
    unresolved: list[str] = []
    counted = 0
    for node in graph.nodes:
        rule = _RULES.get(node.op_type)
        if rule is None:
            continue
        flops = rule(node, lambda name: _shape_of(graph, name))
        if flops is None:
            unresolved.append(node.name or f"{node.op_type}->{node.output[0]}")
            continue
        by_op[node.op_type] = by_op.get(node.op_type, 0) + flops
        counted += 1
    return FlopCount(batch=batch, total=sum(by_op.values()), by_op=by_op, counted_nodes=counted,
                     unresolved=tuple(unresolved))


def _infer_at_batch(model: Any, batch: int, shapes: Mapping[str, Shape]) -> Any:
    """A copy of ``model`` with the batch dimension (and ``shapes``' dimensions) fixed, shapes inferred."""
    import onnx
    from onnx import shape_inference

    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    g = fixed.graph
    initializers = {i.name for i in g.initializer}
    symbols: dict[str, int] = {}  # a symbolic dimension -> its value, also where outputs use it
    for value in g.input:
        dims = value.type.tensor_type.shape.dim
        if value.name in initializers or not dims:
            continue
        if value.name in shapes:
            _fix_dims(value.name, dims, shapes[value.name], symbols)
        if dims[0].HasField("dim_value"):
            continue  # a static first dimension is the model's own batch: keep it
        if dims[0].HasField("dim_param"):
            symbols[dims[0].dim_param] = batch
        dims[0].dim_value = batch  # clears dim_param (a oneof)
    for value in [*g.output, *g.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in symbols:
                dim.dim_value = symbols[dim.dim_param]
    del g.value_info[:]  # stale shapes from the exporter would mask the concrete ones
    try:
        return shape_inference.infer_shapes(fixed, data_prop=True)
    except Exception:  # inference is best effort: nodes without shapes are reported as unresolved
        return fixed


def _fix_dims(name: str, dims: Any, shape: Shape, symbols: dict[str, int]) -> None:
    """Set the dimensions after the batch to ``shape``, recording the values of the symbols they replace."""
    if len(dims) != len(shape) + 1:
        raise ValueError(f"input {name!r} has {len(dims)} dimensions (batch included); got the shape {tuple(shape)} "
                         "for the ones after the batch")
    for dim, value in zip(list(dims)[1:], shape, strict=True):
        if dim.HasField("dim_value") and dim.dim_value != value:
            raise ValueError(f"input {name!r}: shape {tuple(shape)} does not fit the declared dimension {dim.dim_value}")
        if dim.HasField("dim_param"):
            symbols[dim.dim_param] = int(value)
        dim.dim_value = int(value)


def _shape_of(graph: Any, name: str) -> Shape | None:
    if not name:
        return None
    if name in graph.consts:
        return tuple(graph.consts[name].shape)
    shape = graph.shapes.get(name)
    if shape is None or any(not isinstance(d, int) or d <= 0 for d in shape):
        return None
    return shape


ShapeFn = Callable[[str], "Shape | None"]


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _conv(node: Any, shape: ShapeFn) -> int | None:
    """Y[N, M, *out] = sum over C/group * prod(kernel): 2 * |Y| * prod(W.shape[1:])."""
    w, y = shape(node.input[1]), shape(node.output[0])
    if w is None or y is None:
        return None
    return 2 * math.prod(y) * math.prod(w[1:])


def _conv_transpose(node: Any, shape: ShapeFn) -> int | None:
    """Each input element scatters into (M/group) * prod(kernel) outputs: 2 * |X| * prod(W.shape[1:])."""
    x, w = shape(node.input[0]), shape(node.input[1])
    if x is None or w is None:
        return None
    return 2 * math.prod(x) * math.prod(w[1:])


def _gemm(node: Any, shape: ShapeFn) -> int | None:
    """Y[M, N] = A[M, K] B[K, N] (either transposed): 2 * M * N * K."""
    a, y = shape(node.input[0]), shape(node.output[0])
    if a is None or y is None or len(a) != 2:
        return None
    k = a[0] if _attr(node, "transA", 0) else a[1]
    return 2 * math.prod(y) * k


def _matmul(node: Any, shape: ShapeFn) -> int | None:
    """numpy matmul semantics, batch dims broadcast: 2 * |Y| * K with K the last dim of A."""
    a, y = shape(node.input[0]), shape(node.output[0])
    if a is None or y is None or not a:
        return None
    return 2 * math.prod(y) * a[-1]


def _einsum(node: Any, shape: ShapeFn) -> int | None:
    """A two-operand contraction costs one multiply-add per point of the joint index space."""
    shapes = [shape(i) for i in node.input]
    equation = _attr(node, "equation", b"")
    equation = equation.decode() if isinstance(equation, bytes) else str(equation)
    lhs = equation.replace(" ", "").split("->")[0].split(",")
    if len(shapes) != 2 or any(s is None for s in shapes) or "..." in equation or len(lhs) != 2:
        return None
    sizes: dict[str, int] = {}
    for letters, dims in zip(lhs, shapes, strict=True):
        if len(letters) != len(dims):  # type: ignore[arg-type]
            return None
        sizes.update(zip(letters, dims, strict=True))  # type: ignore[arg-type]
    return 2 * math.prod(sizes.values())


def _recurrent(node: Any, shape: ShapeFn) -> int | None:
    """X[seq, batch, in], W[dirs, gates*H, in], R[dirs, gates*H, H]: 2 * seq * batch * (|W| + |R|)."""
    x, w, r = shape(node.input[0]), shape(node.input[1]), shape(node.input[2])
    if x is None or w is None or r is None or len(x) != 3:
        return None
    if _attr(node, "layout", 0):  # batch-first X[batch, seq, in]
        x = (x[1], x[0], x[2])
    return 2 * x[0] * x[1] * (math.prod(w) + math.prod(r))


_RULES: dict[str, Callable[[Any, ShapeFn], int | None]] = {
    "Conv": _conv, "ConvTranspose": _conv_transpose, "Gemm": _gemm, "MatMul": _matmul, "Einsum": _einsum,
    **{kind: _recurrent for kind in _RECURRENT},
}
COUNTED_OPS: tuple[str, ...] = tuple(_RULES)


# ----------------------------------------------------------------------------- export for counting


def export_spec(spec: Any, directory: str | Path, seed: int = 0) -> Path:
    """Export ``spec``'s torch twin to ONNX (dynamic batch) in ``directory``; Keras if torch is missing.

    Raises ``converters.errors.ConversionError`` naming every exporter that was tried.
    """
    return export_for_bench(spec, directory, seed)[0]


def export_for_bench(spec: Any, directory: str | Path, seed: int = 0) -> tuple[Path, str]:
    """The ONNX file to run and count, and whose layout its inputs take ('torch' or 'tf').

    A ``GivenSpec``'s own ONNX file is used as it is; otherwise the torch model is exported
    (dynamo, then legacy), else the Keras one (tf2onnx). A user's models are exported as
    given: nothing is rebuilt or reseeded.
    """
    from converters.errors import ConversionError
    from converters.export import export_model
    from parity.bench.case import Skip
    from parity.bench.given import GivenSpec

    if isinstance(spec, GivenSpec) and spec.onnx_file is not None:
        return Path(spec.onnx_file), spec.onnx_layout
    path = Path(directory) / f"{Path(spec.name).name.replace(':', '_')}.onnx"
    example = spec.example_inputs(batch=2, seed=seed)
    failures: list[str] = []
    for framework, exporter in (("torch", "dynamo"), ("torch", "legacy"), ("tf", "tf2onnx")):
        try:
            model = spec.build(framework, seed)
        except Skip as exc:
            failures.append(f"{framework}: {exc}")
            continue
        except ImportError as exc:
            failures.append(f"{framework}/{exporter}: {_first_line(exc)}")
            continue
        order = spec.input_order(framework) if isinstance(spec, GivenSpec) else spec.input_names
        try:
            arrays = [spec.inputs_for(framework, example)[n] for n in order]
            return export_model(model, framework, arrays, path, input_names=order,
                                output_names=spec.output_names,
                                **({"exporter": exporter} if framework == "torch" else {})), framework
        except (ConversionError, ImportError) as exc:
            failures.append(f"{framework}/{exporter}: {_first_line(exc)}")
    raise ConversionError(f"could not export {spec.name!r} to ONNX: " + "; ".join(dict.fromkeys(failures)))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


# ----------------------------------------------------------------------------- roofline


def matmul_peak(device: str = "cpu", precision: str = "fp32", n: int | None = None,
                budget_s: float = 0.5, min_runs: int = 5) -> PeakProbe:
    """Measure an n x n x n matmul with torch (threads and TF32 as already set) and return GFLOP/s."""
    import torch

    from parity.bench.timing import measure, noop

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
    n = n or (8192 if device == "cuda" else 1024)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device == "cuda" else noop
    with torch.inference_mode():
        m = measure(lambda: torch.mm(a, b), sync, budget_s=budget_s, min_runs=min_runs, warmup=2)
    return PeakProbe(gflops=achieved_gflops(2 * n**3, m.stats.min_s),
                     median_gflops=achieved_gflops(2 * n**3, m.stats.median_s), n=n, dtype=str(dtype).split(".")[-1],
                     device=device, median_s=m.stats.median_s, runs=m.stats.count)


def achieved_gflops(flops: int | float, seconds: float) -> float:
    """FLOPs per second in units of 1e9."""
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    return flops / seconds / 1e9


def fraction_of_peak(achieved: float, peak: float | None) -> float | None:
    return achieved / peak if peak else None


def format_flops(flops: float) -> str:
    """1234567 -> '1.235 MFLOP'."""
    for unit, scale in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6), ("kFLOP", 1e3)):
        if abs(flops) >= scale:
            return f"{flops / scale:.4g} {unit}"
    return f"{flops:.0f} FLOP"


def format_flops_table(source: str, counts: Sequence[Any]) -> str:
    """The table `parity flops` prints: per batch size, the total and the count by operator kind."""
    lines = [f"forward FLOPs of {source} (2 FLOPs per multiply-add; Conv, ConvTranspose, Gemm, MatMul, "
             "Einsum, LSTM/GRU/RNN)"]
    for c in counts:
        ops = ", ".join(f"{op} {format_flops(v)}" for op, v in sorted(c.by_op.items()))
        lines.append(f"  batch {c.batch}: {format_flops(c.total)} ({c.total:,} FLOP; {c.counted_nodes} nodes: {ops})")
        if c.unresolved:
            lines.append(f"    not counted, shapes unknown: {', '.join(c.unresolved)}")
    return "\n".join(lines)


__all__: Sequence[str] = ["COUNTED_OPS", "FlopCount", "PeakProbe", "achieved_gflops", "count_flops", "format_flops_table",
                          "export_for_bench", "export_spec", "format_flops", "fraction_of_peak", "matmul_peak"]
