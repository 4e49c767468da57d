"""Render a ``Program`` as a ``torch.nn.Module``: submodules in ``__init__``, a plain ``forward``."""

from __future__ import annotations

from typing import Any

from converters.codegen.masked_rnn import torch_expression
from converters.codegen.naming import Unique, class_name, identifier
from converters.codegen.program import Op, Program, has_bias, variable_names
from converters.codegen.text import assign_line, call_line, literal, subscript
from converters.errors import UnsupportedLayerError

# tf2onnx cannot tell a folded BatchNorm's epsilon and momentum: Keras's defaults are written
KERAS_BN_EPS, KERAS_BN_MOMENTUM = 1e-3, 0.99
_UNARY = {"relu": "torch.relu", "sigmoid": "torch.sigmoid", "tanh": "torch.tanh", "exp": "torch.exp",
          "sqrt": "torch.sqrt", "neg": "torch.neg", "abs": "torch.abs", "erf": "torch.erf", "relu6": "F.relu6",
          "softplus": "F.softplus", "hard_swish": "F.hardswish"}
_INFIX = {"add": "+", "sub": "-", "mul": "*", "div": "/", "pow": "**"}


def _kw(**kwargs: Any) -> str:
    return ", ".join(f"{k}={literal(v)}" for k, v in kwargs.items())


def _one(values: tuple[int, ...]) -> Any:
    return values[0] if len(set(values)) == 1 else values


def _module(op: Op) -> str:
    """The constructor of a parametric layer's submodule."""
    if op.attrs.get("restored_batchnorm"):
        c = op.attrs["channels"]
        eps, momentum = op.attrs.get("epsilon", KERAS_BN_EPS), op.attrs.get("momentum", KERAS_BN_MOMENTUM)
        return f"nn.BatchNorm2d({c}, {_kw(eps=eps, momentum=round(1 - momentum, 6))})"
    g = op.group
    assert g is not None
    if g.kind == "dense":
        n_in, n_out = (int(d) for d in g.tensors["kernel"].shape)  # type: ignore[union-attr]
        bias = {} if has_bias(op) else {"bias": False}
        return f"nn.Linear({n_in}, {n_out}{', ' + _kw(**bias) if bias else ''})"
    if g.kind == "conv":
        w = g.tensors["weight"]
        assert w is not None
        groups = int(g.attrs.get("group", 1))
        extra: dict[str, Any] = {}
        s, d = tuple(g.attrs["strides"]), tuple(g.attrs["dilations"])
        if any(v != 1 for v in s):
            extra["stride"] = _one(s)
        if op.attrs["padding"] != "valid":
            extra["padding"] = _one(op.attrs["padding"])
        if any(v != 1 for v in d):
            extra["dilation"] = _one(d)
        if groups > 1:
            extra["groups"] = groups
        if not has_bias(op):
            extra["bias"] = False
        kernel = _one(tuple(int(k) for k in w.shape[2:]))
        args = f"{int(w.shape[1]) * groups}, {int(w.shape[0])}, {literal(kernel)}"
        return f"nn.Conv{w.ndim - 2}d({args}{', ' + _kw(**extra) if extra else ''})"
    if g.kind == "convtranspose":
        w = g.tensors["weight"]
        assert w is not None
        extra = {}
        s = tuple(g.attrs["strides"])
        if any(v != 1 for v in s):
            extra["stride"] = _one(s)
        if op.attrs["padding"] != "valid":
            extra["padding"] = _one(op.attrs["padding"])
        if any(op.attrs["output_padding"]):
            extra["output_padding"] = _one(op.attrs["output_padding"])
        if not has_bias(op):
            extra["bias"] = False
        kernel = _one(tuple(int(k) for k in w.shape[2:]))
        args = f"{int(w.shape[0])}, {int(w.shape[1])}, {literal(kernel)}"
        return f"nn.ConvTranspose{w.ndim - 2}d({args}{', ' + _kw(**extra) if extra else ''})"
    if g.kind == "batchnorm":
        c = int(g.tensors["gamma"].shape[0])  # type: ignore[union-attr]
        given = {**g.attrs, **{k: v for k, v in op.attrs.items() if k in ("epsilon", "momentum")}}
        momentum = round(1.0 - float(given.get("momentum") or KERAS_BN_MOMENTUM), 6)
        eps = given.get("epsilon") or KERAS_BN_EPS  # None: folded into a scale by the exporter
        dims = {2: 1, 3: 1, 4: 2, 5: 3}[int(op.attrs.get("rank", 4))]
        return f"nn.BatchNorm{dims}d({c}, {_kw(eps=eps, momentum=momentum)})"
    if g.kind == "layernorm":
        c = int(g.tensors["gamma"].shape[0])  # type: ignore[union-attr]
        return f"nn.LayerNorm({c}, {_kw(eps=g.attrs['epsilon'])})"
    if g.kind == "embedding":
        n, dim = g.tensors["table"].shape  # type: ignore[union-attr]
        return f"nn.Embedding({int(n)}, {int(dim)})"
    if g.kind in ("lstm", "gru"):
        extra = {**({"num_layers": op.attrs["num_layers"]} if op.attrs.get("num_layers", 1) > 1 else {}),
                 "batch_first": True, **({"bidirectional": True} if op.attrs["direction"] == "bidirectional" else {})}
        if g.kind == "gru" and not op.attrs["reset_after"]:
            raise UnsupportedLayerError(f"GRU {op.name!r} with linear_before_reset=0 (Keras reset_after=False) has "
                                        "no torch nn.GRU twin")
        cls = "LSTM" if g.kind == "lstm" else "GRU"
        return f"nn.{cls}({op.attrs['input_size']}, {op.attrs['hidden']}, {_kw(**extra)})"
    if g.kind == "tensor":  # a learned tensor used as is (class token, position table)
        shape = g.tensors["value"].shape  # type: ignore[union-attr]
        return f"nn.Parameter(torch.zeros({', '.join(str(int(d)) for d in shape)}))"
    raise AssertionError(f"no torch module for kind {g.kind!r}")  # lower() refuses other kinds first


def _pad_args(pads: tuple[tuple[int, int], ...]) -> tuple[int, ...]:
    """F.pad's flat pads: the last axis first, as far as the first padded axis."""
    first = next((i for i, p in enumerate(pads) if p != (0, 0)), len(pads) - 1)
    return tuple(v for p in reversed(pads[first:]) for v in p)


def _expression(op: Op, args: list[str], attr: dict[str, str]) -> str:
    a = op.attrs
    x = args[0]
    if op.kind == "layer":
        if op.group is not None and op.group.kind == "tensor":
            return _parameter(op, x, f"self.{attr[op.out]}")
        rnn = op.group is not None and op.group.kind in ("lstm", "gru")
        return f"self.{attr[op.out]}({x}){'[0]' if rnn else ''}"  # an RNN returns (sequence, state)
    if op.kind == "slice":
        return f"{x}{subscript(a['slices'])}"
    if op.kind == "cast":
        return f"{x}.to(torch.{a['dtype']})"
    if op.kind in _UNARY:
        return f"{_UNARY[op.kind]}({x})"
    if op.kind == "elu":
        return f"F.elu({x}, alpha={literal(a.get('alpha', 1.0))})"
    if op.kind == "leaky_relu":
        return f"F.leaky_relu({x}, {literal(a['alpha'])})"
    if op.kind == "clip":
        return f"torch.clamp({x}, {literal(a['min'])}, {literal(a['max'])})"
    if op.kind in _INFIX:
        if "scalar" in a:
            pair = (literal(a["scalar"]), x) if a["scalar_first"] else (x, literal(a["scalar"]))
            return f"{pair[0]} {_INFIX[op.kind]} {pair[1]}"
        return f"{args[0]} {_INFIX[op.kind]} {args[1]}"
    if op.kind in ("maximum", "minimum"):
        other = literal(a["scalar"]) if "scalar" in a else args[1]
        return f"torch.{op.kind}({x}, {other if 'scalar' not in a else f'torch.tensor({other})'})"
    if op.kind == "concat":
        return f"torch.cat([{', '.join(args)}], dim={a['axis']})"
    if op.kind == "softmax":
        return f"torch.softmax({x}, dim={a['axis']})"
    if op.kind == "pad":
        value = f", value={literal(a['value'])}" if a["value"] != 0.0 else ""
        return f"F.pad({x}, {literal(_pad_args(a['pads']))}{value})"
    if op.kind in ("maxpool", "avgpool"):
        fn = f"F.{'max' if op.kind == 'maxpool' else 'avg'}_pool{len(a['kernel'])}d"
        pad = "" if a["padding"] == "valid" else f", padding={literal(_one(a['padding']))}"
        return f"{fn}({x}, {literal(_one(a['kernel']))}, stride={literal(_one(a['strides']))}{pad})"
    if op.kind in ("gap", "gmp"):
        fn = "mean" if op.kind == "gap" else "amax"
        return f"{x}.{fn}({literal(tuple(range(2, a['rank'])))}, keepdim={a['keepdims']})"
    if op.kind in ("mean", "max", "sum"):
        fn = {"mean": "mean", "max": "amax", "sum": "sum"}[op.kind]
        return f"{x}.{fn}({literal(tuple(a['axes']))}, keepdim={a['keepdims']})"
    if op.kind == "flatten":
        return f"torch.flatten({x}, 1)"
    if op.kind == "crop":
        parts = [":" if c == (0, 0) else f"{c[0]}:{c[0] + size}" for c, size in zip(a["crop"], a["sizes"], strict=True)]
        while parts and parts[-1] == ":":
            parts.pop()
        return f"{x}[{', '.join(parts)}]"
    if op.kind == "reshape":
        return f"{x}.reshape(-1, {', '.join(str(d) for d in a['shape'])})"
    if op.kind == "transpose":
        return f"{x}.permute({', '.join(str(d) for d in a['perm'])})"
    if op.kind == "attention":
        scale = "" if a["scale"] is None else f", scale={literal(a['scale'])}"
        return f"attention({', '.join(args)}, heads={a['heads']}{scale})"
    if op.kind == "gelu":
        return f"F.gelu({x})" if a["approximate"] == "none" else f'F.gelu({x}, approximate="tanh")'
    if op.kind == "fill_like":
        return f"torch.ones_like({x})" if a["value"] == 1 else f"torch.full_like({x}, {literal(a['value'])})"
    if op.kind == "cumsum":
        return f"torch.cumsum({x}, dim={a['axis']})"
    packing = torch_expression(op, args)  # a masked Keras RNN's packed sequence
    if packing is not None:
        return packing
    raise AssertionError(f"no torch rendering for op {op.kind!r}")


def _parameter(op: Op, x: str, param: str) -> str:
    """A learned tensor's use: broadcast over the batch of ``x``, or combined with ``x``."""
    how = op.attrs["op"]
    if how == "expand":
        rank = op.group.tensors["value"].ndim  # type: ignore[union-attr]
        return f"{param}.expand({x}.shape[0], {', '.join(['-1'] * (rank - 1))})"
    pair = (param, x) if op.attrs["param_first"] else (x, param)
    return f"{pair[0]} {_INFIX[how]} {pair[1]}"


ATTENTION = '''def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    heads: int,
    scale: float | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention of (batch, length, features) q, k, v split into ``heads`` heads;
    ``mask`` is added to the scores."""
    q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v))
    x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return x.transpose(1, 2).flatten(2)
'''.splitlines()


def render(program: Program, header: str) -> str:
    """The source of ``model.py``: the twin's class and ``build_model()``."""
    names = variable_names(program, inputs_reusable=True)
    for i in program.inputs:
        names[i.var] = identifier(i.name)
    unique = Unique({"forward", "training"})
    attr = {op.out: unique(identifier(op.name)) for op in program.layers()}
    cls = class_name(program.model)
    init = [call_line(f"self.{attr[op.out]} = ", _module(op), "", indent=8) for op in program.layers()]
    forward = [assign_line(f"{names[op.out]} = ", _expression(op, [names[a] for a in op.args], attr), indent=8)
               for op in program.ops]
    outs = [names[v] for v, _ in program.outputs]
    forward.append(f"return {outs[0]}" if len(outs) == 1 else f"return {', '.join(outs)}")
    params = ", ".join(f"{names[i.var]}: torch.Tensor" for i in program.inputs)
    returns = "torch.Tensor" if len(outs) == 1 else f"tuple[{', '.join(['torch.Tensor'] * len(outs))}]"
    signature = f"    def forward(self, {params}) -> {returns}:"
    helpers = ATTENTION if any(op.kind == "attention" for op in program.ops) else []
    uses_f = any(line.find("F.") >= 0 for line in [*init, *forward, *helpers])
    lines = [header, "", "import torch", *(["import torch.nn.functional as F"] if uses_f else []),
             "from torch import nn", "", "",
             *helpers, *(["", ""] if helpers else []),
             f"class {cls}(nn.Module):",
             f'    """The PyTorch twin of {program.model} (channels-first)."""', "",
             "    def __init__(self) -> None:", "        super().__init__()",
             *[f"        {line}" for line in init], "",
             signature if len(signature) <= 110 else f"    def forward(\n        self, {params}\n    ) -> {returns}:",
             *[f"        {line}" for line in forward], "", "",
             f"def build_model() -> {cls}:",
             '    """The twin with freshly initialised weights."""',
             f"    return {cls}()"]
    return "\n".join(lines) + "\n"
