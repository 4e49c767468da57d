"""Render a ``Program`` as a Keras 3 functional model built from ``keras.layers``."""

from __future__ import annotations

from typing import Any

from converters.codegen.attention_keras import keras_call, keras_classes, keras_expression, keras_layer
from converters.codegen.program import Op, Program, has_bias, variable_names
from converters.codegen.text import assign_line, call_line, literal, subscript

_ACTIVATIONS = {"sigmoid", "tanh", "elu", "softplus", "hard_swish"}
_OPS = {"exp": "exp", "sqrt": "sqrt", "neg": "negative", "abs": "absolute", "erf": "erf"}
_MERGE = {"add": "Add", "sub": "Subtract", "mul": "Multiply", "maximum": "Maximum", "minimum": "Minimum"}
# Keras's Multiply/Maximum/Minimum layers replace the masked steps of an input that carries a Keras
# mask (a masked RNN's output) by 1 or +-inf before merging: the ONNX graph has no such masks, so in
# a model that passes `mask=` these merges are written as keras.ops functions, which ignore masks.
_MASK_SENSITIVE = ("mul", "maximum", "minimum")
_BINARY_OPS = {"add": "add", "sub": "subtract", "mul": "multiply", "div": "divide", "maximum": "maximum",
               "minimum": "minimum", "pow": "power"}


def _kw(**kwargs: Any) -> str:
    return ", ".join(f"{k}={literal(v)}" for k, v in kwargs.items())


def _layer(op: Op) -> str:
    """The constructor of a parametric layer."""
    name = op.name
    transformer = keras_layer(op)  # MultiHeadAttention, a class token, a position embedding
    if transformer is not None:
        return transformer
    if op.attrs.get("restored_batchnorm"):
        return f"layers.BatchNormalization({_kw(name=name)})"
    g = op.group
    assert g is not None
    if g.kind == "dense":
        units = int(g.tensors["kernel"].shape[1])  # type: ignore[union-attr]
        extra: dict[str, Any] = {} if has_bias(op) else {"use_bias": False}
        if op.attrs.get("activation"):
            extra["activation"] = op.attrs["activation"]
        return f"layers.Dense({units}, {_kw(**extra, name=name)})"
    if g.kind == "conv":
        w = g.tensors["weight"]
        assert w is not None
        spatial = w.ndim - 2
        kernel = tuple(int(k) for k in w.shape[2:])
        groups = int(g.attrs.get("group", 1))
        k = kernel[0] if len(set(kernel)) == 1 else kernel
        s = tuple(g.attrs["strides"])
        d = tuple(g.attrs["dilations"])
        extra: dict[str, Any] = {}
        if any(v != 1 for v in s):
            extra["strides"] = s[0] if len(set(s)) == 1 else s
        if op.attrs["padding"] != "valid":
            extra["padding"] = op.attrs["padding"]
        if any(v != 1 for v in d):
            extra["dilation_rate"] = d[0] if len(set(d)) == 1 else d
        use_bias = has_bias(op)
        if not use_bias:
            extra["use_bias"] = False
        if groups > 1 and groups == w.shape[1] * groups and w.shape[1] == 1 and spatial == 2:
            mult = int(w.shape[0]) // groups
            if mult != 1:
                extra["depth_multiplier"] = mult
            return f"layers.DepthwiseConv2D({k}, {_kw(**extra, name=name)})"
        if groups > 1:
            extra["groups"] = groups
        return f"layers.Conv{spatial}D({int(w.shape[0])}, {k}, {_kw(**extra, name=name)})"
    if g.kind == "convtranspose":
        w = g.tensors["weight"]
        assert w is not None
        kernel = tuple(int(k) for k in w.shape[2:])
        s = tuple(g.attrs["strides"])
        extra = {}
        if any(v != 1 for v in s):
            extra["strides"] = s[0] if len(set(s)) == 1 else s
        if op.attrs["padding"] != "valid":
            extra["padding"] = op.attrs["padding"]
        if any(op.attrs["output_padding"]):
            extra["output_padding"] = op.attrs["output_padding"]
        if not has_bias(op):
            extra["use_bias"] = False
        k = kernel[0] if len(set(kernel)) == 1 else kernel
        return f"layers.Conv{w.ndim - 2}DTranspose({int(w.shape[1])}, {k}, {_kw(**extra, name=name)})"
    if g.kind == "batchnorm":
        if g.attrs.get("epsilon") is None:  # folded into a scale by the exporter: Keras's defaults
            return f"layers.BatchNormalization({_kw(name=name)})"
        kw = {"epsilon": g.attrs["epsilon"], "momentum": g.attrs["momentum"]}
        return f"layers.BatchNormalization({_kw(**kw, name=name)})"
    if g.kind == "layernorm":
        return f"layers.LayerNormalization({_kw(epsilon=g.attrs['epsilon'], name=name)})"
    if g.kind == "embedding":
        n, dim = g.tensors["table"].shape  # type: ignore[union-attr]
        return f"layers.Embedding({int(n)}, {int(dim)}, {_kw(name=name)})"
    if g.kind in ("lstm", "gru"):
        cls = "LSTM" if g.kind == "lstm" else "GRU"
        extra = {"return_sequences": True}
        if g.kind == "gru" and not op.attrs["reset_after"]:
            extra["reset_after"] = False
        if op.attrs["direction"] == "bidirectional":
            return f"layers.Bidirectional(layers.{cls}({op.attrs['hidden']}, {_kw(**extra)}), {_kw(name=name)})"
        return f"layers.{cls}({op.attrs['hidden']}, {_kw(**extra, name=name)})"
    raise AssertionError(f"no Keras layer for kind {g.kind!r}")  # lower() refuses other kinds first


def _ctor(op: Op) -> str | None:
    """The Keras layer of a one-input op (its constructor), or None when it is no layer."""
    a, name = op.attrs, op.name
    if op.kind == "layer":
        return _layer(op)
    if op.kind == "relu":
        return f"layers.ReLU({_kw(name=name)})"
    if op.kind == "relu6":
        return f"layers.ReLU({_kw(max_value=6.0, name=name)})"
    if op.kind in _ACTIVATIONS:
        return f"layers.Activation({_kw(activation=op.kind, name=name)})"
    if op.kind == "leaky_relu":
        return f"layers.LeakyReLU({_kw(negative_slope=a['alpha'], name=name)})"
    if op.kind == "softmax":
        return f"layers.Softmax({_kw(axis=a['axis'], name=name)})"
    if op.kind == "pad":
        return _zero_padding(op)
    if op.kind in ("maxpool", "avgpool"):
        cls = "MaxPooling" if op.kind == "maxpool" else "AveragePooling"
        k, s = a["kernel"], a["strides"]
        kw = {"strides": s[0] if len(set(s)) == 1 else s} if s != k else {}
        if a["padding"] != "valid":
            kw["padding"] = a["padding"]
        size = k[0] if len(set(k)) == 1 else k
        return f"layers.{cls}{len(k)}D({size}, {_kw(**kw, name=name)})"
    if op.kind in ("gap", "gmp"):
        cls = "GlobalAveragePooling" if op.kind == "gap" else "GlobalMaxPooling"
        return f"layers.{cls}{a['rank'] - 2}D({_kw(keepdims=a['keepdims'], name=name)})"
    if op.kind == "flatten":
        return f"layers.Flatten({_kw(name=name)})"
    if op.kind == "crop":
        inner = a["crop"][1:-1]
        spec = inner[0] if len(inner) == 1 else tuple(inner)
        return f"layers.Cropping{len(inner)}D({literal(spec)}, {_kw(name=name)})"
    if op.kind == "reshape":
        return f"layers.Reshape({literal(a['shape'])}, {_kw(name=name)})"
    if op.kind == "transpose":
        return f"layers.Permute({literal(tuple(a['perm'][1:]))}, {_kw(name=name)})"
    return None


def _expression(op: Op, args: list[str], masked: bool = False) -> str:
    """The right-hand side of the op's line; ``masked``: the model passes Keras masks."""
    a, name = op.attrs, op.name
    x = args[0]
    ctor = _ctor(op)
    if ctor is not None and keras_call(op, ctor, args) is not None:
        return keras_call(op, ctor, args)  # type: ignore[return-value]
    if ctor is not None:
        return f"{ctor}({x}, mask={args[1]})" if op.kind == "layer" and len(args) == 2 else f"{ctor}({x})"
    if op.kind == "slice":
        return f"{x}{subscript(a['slices'])}"
    if op.kind == "cast":
        return f"keras.ops.cast({x}, {literal(a['dtype'])})"
    if op.kind == "repeat_steps":  # (B,) lengths -> (B, T)
        return f"keras.ops.repeat(keras.ops.expand_dims({x}, 1), {a['steps']}, axis=1)"
    if op.kind == "step_numbers":  # 1 ... T in each row
        return f"keras.ops.cumsum(keras.ops.ones_like({x}), axis=1)"
    if op.kind == "sequence_mask":  # step t (from 1) of a sequence is valid while t <= its length
        return f"keras.ops.less_equal({x}, keras.ops.expand_dims({args[1]}, 1))"
    if keras_expression(op, args) is not None:  # GELU, an attention mask
        return keras_expression(op, args)  # type: ignore[return-value]
    if op.kind in _OPS:
        return f"keras.ops.{_OPS[op.kind]}({x})"
    if op.kind == "clip":
        return f"keras.ops.clip({x}, {literal(a['min'])}, {literal(a['max'])})"
    if op.kind in _BINARY_OPS and "scalar" in a:
        pair = (literal(a["scalar"]), x) if a["scalar_first"] else (x, literal(a["scalar"]))
        return f"keras.ops.{_BINARY_OPS[op.kind]}({pair[0]}, {pair[1]})"
    if op.kind in _MERGE and not (masked and op.kind in _MASK_SENSITIVE):
        return f"layers.{_MERGE[op.kind]}({_kw(name=name)})([{', '.join(args)}])"
    if op.kind in _BINARY_OPS:
        return f"keras.ops.{_BINARY_OPS[op.kind]}({args[0]}, {args[1]})"
    if op.kind == "concat":
        return f"layers.Concatenate({_kw(axis=a['axis'], name=name)})([{', '.join(args)}])"
    if op.kind == "pad":
        pads, value = a["pads"], a["value"]
        return f"keras.ops.pad({x}, {literal(tuple(pads))}, constant_values={literal(value)})"
    if op.kind in ("mean", "max", "sum"):
        return f"keras.ops.{op.kind}({x}, {_kw(axis=a['axes'], keepdims=a['keepdims'])})"
    raise AssertionError(f"no Keras rendering for op {op.kind!r}")


def _zero_padding(op: Op) -> str | None:
    pads, value = op.attrs["pads"], op.attrs["value"]
    rank = len(pads)
    if value != 0.0 or pads[0] != (0, 0) or pads[-1] != (0, 0) or rank not in (3, 4, 5):
        return None
    inner = pads[1:-1]
    spec = inner[0] if rank == 3 else tuple(inner)
    return f"layers.ZeroPadding{rank - 2}D({literal(spec)}, {_kw(name=op.name)})"


def branches(program: Program) -> dict[int, int]:
    """Shortcut branches to wrap in a ``keras.Sequential``: {index of first op: index of last op}.

    A functional model lists its layers by depth, which puts a residual's shortcut layers between
    the main branch's; the porter (and a reader) wants them in forward order. A chain of two or
    more parametric layers that starts at a fork and ends in a residual Add (not as its first
    operand) becomes one nested model, listed after the main branch, as torchvision's
    ``downsample`` is.
    """
    uses = program.uses()
    ops = program.ops
    producer = {op.out: k for k, op in enumerate(ops)}
    found: dict[int, int] = {}
    for op in ops:
        if op.kind != "add" or len(op.args) < 2:
            continue
        for arg in op.args[1:]:
            end = producer.get(arg)
            start = end
            while start is not None and _ctor(ops[start]) is not None and len(ops[start].args) == 1 \
                    and uses.get(ops[start].out, 0) == 1:
                prev = producer.get(ops[start].args[0])
                if prev is None or _ctor(ops[prev]) is None or uses.get(ops[prev].out, 0) != 1:
                    break
                start = prev
            if start is not None and end is not None and end > start \
                    and all(ops[j].kind == "layer" for j in range(start, end + 1)) \
                    and uses.get(ops[start].args[0], 0) > 1 and all(producer.get(ops[j].args[0]) == j - 1
                                                                     for j in range(start + 1, end + 1)):
                found[start] = end
    return found


def fuse_activations(program: Program) -> Program:
    """A Dense followed only by a ReLU becomes ``Dense(..., activation="relu")``, as Keras models are
    written (and as the porter's diagnostics find a Dense that feeds a Reshape)."""
    import dataclasses

    uses = program.uses()
    ops: list[Op] = []
    skip = -1
    for k, op in enumerate(program.ops):
        if k == skip:
            continue
        nxt = program.ops[k + 1] if k + 1 < len(program.ops) else None
        if op.kind == "layer" and op.group is not None and op.group.kind == "dense" and nxt is not None \
                and nxt.kind == "relu" and nxt.args == [op.out] and uses.get(op.out) == 1:
            ops.append(dataclasses.replace(op, out=nxt.out, attrs={**op.attrs, "activation": "relu"}))
            skip = k + 1
            continue
        ops.append(op)
    return dataclasses.replace(program, ops=ops)


def _common_name(names: list[str]) -> str:
    parts = [n.split(".") for n in names]
    common = []
    for group in zip(*parts, strict=False):
        if len(set(group)) != 1:
            break
        common.append(group[0])
    return ".".join(common) if common and len(common) < min(len(p) for p in parts) else f"{names[0]}_branch"


def render(program: Program, header: str) -> str:
    """The source of ``model.py``: ``build_model()`` returns the twin."""
    names = variable_names(program, inputs_reusable=False)
    body = []
    for i in program.inputs:
        shape = tuple(i.shape)
        kw = {"shape": shape, "name": i.name, **({"dtype": i.dtype} if i.dtype != "float32" else {})}
        body.append(call_line(f"{names[i.var]} = keras.Input(", _kw(**kw), ")"))
    program = fuse_activations(program)
    wrap = branches(program)
    taken = {op.name for op in program.ops}
    masked = any(op.kind == "layer" and len(op.args) == 2 and _ctor(op) is not None for op in program.ops)
    k = 0
    while k < len(program.ops):
        op = program.ops[k]
        if k in wrap:
            chain = program.ops[k:wrap[k] + 1]
            name = _common_name([c.name for c in chain])
            name = name if name not in taken else f"{name}_seq"
            taken.add(name)
            items = "".join(f"\n            {_ctor(c)}," for c in chain)
            body.append(f"{names[chain[-1].out]} = keras.Sequential(\n        [{items}\n        ],\n"
                        f"        name={literal(name)},\n    )({names[op.args[0]]})")
            k = wrap[k] + 1
            continue
        body.append(assign_line(f"{names[op.out]} = ", _expression(op, [names[a] for a in op.args], masked)))
        k += 1
    ins = [names[i.var] for i in program.inputs]
    outs = [names[v] for v, _ in program.outputs]
    inputs = ins[0] if len(ins) == 1 else f"[{', '.join(ins)}]"
    outputs = outs[0] if len(outs) == 1 else f"[{', '.join(outs)}]"
    body.append(f"return keras.Model(inputs={inputs}, outputs={outputs}, name={literal(program.model)})")
    lines = [header, "", "import keras", "from keras import layers", "", "", *keras_classes(program),
             "def build_model() -> keras.Model:",
             f'    """The Keras 3 twin of {program.model} (channels-last), with freshly initialised weights."""']
    lines += [f"    {line}" for line in body]
    return "\n".join(lines) + "\n"
