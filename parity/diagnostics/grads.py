"""Gradient parity: the same loss on the same batch in both twins, every parameter's gradient compared.

Both twins run in training mode (BatchNorm normalises with the batch statistics, as it
does when one fine-tunes) with dropout switched off: dropout draws from each
framework's own random stream, and no seed makes the two streams equal. The loss is
the mean squared error against seeded targets (``mse``, any output) or the
cross-entropy on seeded labels (``xent``, one (batch, classes) logits output), in float32.

Each parameter is compared in the canonical (ONNX) layout the port uses, through the
transforms of ``converters.layouts`` (gradients are linear in the parameters, so the
same transform applies): a torch ``Linear.weight`` (out, in) and a Keras ``Dense.kernel``
(in, out) are both read as the kernel (in, out); conv kernels as (M, C/g, *k); RNN
gates in ONNX order. A Keras Dense fed by a Flatten of an (H, W, C) map (or reshaped into
one) has its rows (columns) permuted to torch's C, H, W order first. PyTorch's LSTM has
two biases per gate where Keras has their sum: the canonical bias is that sum, and its
gradient is the gradient of either torch bias (they are the same).

Tolerances: the spec's tolerance is calibrated for the forward output (depth D). A
gradient goes forward through the whole model and back through up to D layers again,
about 2D float32 accumulations, so by the random-walk argument of ``parity.diagnostics.localize``
it gets ``sqrt(2)`` times the output tolerance, relative to the largest gradient of the
parameter's layer (so that a gradient that is zero in exact arithmetic, e.g. a bias just
before a training-mode BatchNorm, is judged against its layer, not its own rounding
noise). ``strict`` takes the spec's tolerance as given.

Training-mode BatchNorm divides by the batch's standard deviation per channel; over very
few values per channel (a batch of 2 on a 1x1 map) that amplifies rounding by 100x and
more. ``choose_batch`` raises the batch until every BatchNorm sees at least
``MIN_VALUES_PER_CHANNEL`` values per channel, and the report says so.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from converters import layouts
from parity.compare import Comparison, compare
from parity.errors import UsageError

Reader = Callable[[list[np.ndarray], str], np.ndarray]  # (arrays of the handles, "value" | "grad") -> canonical
LOSSES = ("mse", "xent")
TARGET_SEED_OFFSET = 104729  # targets and labels draw from seed + this, never from the inputs' stream


# ----------------------------------------------------------------------------- canonical slots


@dataclass
class Slot:
    """One canonical tensor of one layer, with the framework objects it is read from on each side."""

    layer: str
    role: str
    kind: str
    trainable: bool
    torch: list[Any] = field(repr=False)
    keras: list[Any] = field(repr=False)
    torch_read: Reader = field(repr=False)
    keras_read: Reader = field(repr=False)
    torch_names: list[str] = field(default_factory=list)
    keras_names: list[str] = field(default_factory=list)
    note: str = ""
    torch_layer: Any = field(default=None, repr=False)  # the converters.targets.TargetLayer on each side
    keras_layer: Any = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return f"{self.layer}.{self.role}"


def _inverse(order: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argsort(order))


def _gates(x: np.ndarray, order: tuple[int, ...], axis: int = 0) -> np.ndarray:
    return layouts.reorder_gates(x, _inverse(order), axis)  # framework order -> ONNX order


def _one(fn: Callable[[np.ndarray], np.ndarray]) -> Reader:
    return lambda a, mode: np.asarray(fn(a[0]), dtype=np.float32)


def _torch_readers(layer: Any) -> dict[str, tuple[list[Any], Reader, bool]]:
    """role -> (torch tensors, reader to the canonical layout, trainable)."""
    m, kind = layer.obj, layer.kind
    out: dict[str, tuple[list[Any], Reader, bool]] = {}
    if kind == "tensor":
        return {"value": ([m], _one(lambda a: a), True)}
    if kind == "dense":
        out["kernel"] = ([m.weight], _one(lambda a: a.T), True)
    elif kind in ("conv", "convtranspose"):
        out["weight"] = ([m.weight], _one(lambda a: a), True)
    elif kind in ("batchnorm", "layernorm", "groupnorm"):
        out["gamma"] = ([m.weight], _one(lambda a: a.reshape(-1)), True)
        if m.bias is not None:
            out["beta"] = ([m.bias], _one(lambda a: a.reshape(-1)), True)
        if kind == "batchnorm":
            out["mean"] = ([m.running_mean], _one(lambda a: a), False)
            out["var"] = ([m.running_var], _one(lambda a: a), False)
        return out
    elif kind == "embedding":
        return {"table": ([m.weight], _one(lambda a: a), True)}
    elif kind in ("lstm", "gru"):
        return _torch_rnn(layer)
    elif kind == "attention":
        e = m.embed_dim
        for i, part in enumerate("qkv"):
            out[f"{part}_kernel"] = ([m.in_proj_weight], _one(lambda a, i=i: a[i * e:(i + 1) * e].T), True)
            if m.in_proj_bias is not None:
                out[f"{part}_bias"] = ([m.in_proj_bias], _one(lambda a, i=i: a[i * e:(i + 1) * e]), True)
        out["out_kernel"] = ([m.out_proj.weight], _one(lambda a: a.T), True)
        if m.out_proj.bias is not None:
            out["out_bias"] = ([m.out_proj.bias], _one(lambda a: a), True)
        return out
    else:
        raise UsageError(f"gradient parity: torch layer {layer.name!r} has kind {kind!r}, which has no reader")
    if getattr(m, "bias", None) is not None:
        out["bias"] = ([m.bias], _one(lambda a: a), True)
    return out


def _torch_rnn(layer: Any) -> dict[str, tuple[list[Any], Reader, bool]]:
    m, kind = layer.obj, layer.kind
    order = layouts.LSTM_ONNX_TO_TORCH if kind == "lstm" else layouts.GRU_ONNX_TO_TORCH
    k = int(layer.name.rsplit(".l", 1)[1]) if m.num_layers > 1 else 0
    sfx = [f"_l{k}"] + ([f"_l{k}_reverse"] if m.bidirectional else [])
    out: dict[str, tuple[list[Any], Reader, bool]] = {
        "W": ([getattr(m, "weight_ih" + s) for s in sfx], lambda a, mode: np.stack([_gates(x, order) for x in a]), True),
        "R": ([getattr(m, "weight_hh" + s) for s in sfx], lambda a, mode: np.stack([_gates(x, order) for x in a]), True),
    }
    if m.bias:
        handles = [getattr(m, f"bias_{w}{s}") for s in sfx for w in ("ih", "hh")]
        if kind == "lstm":  # Keras keeps one bias per gate: compare the sum (its gradient is either one's)
            def read(a: list[np.ndarray], mode: str) -> np.ndarray:
                pairs = [(a[2 * d], a[2 * d + 1]) for d in range(len(a) // 2)]
                return np.stack([_gates(ih + hh if mode == "value" else ih, order) for ih, hh in pairs])
        else:
            def read(a: list[np.ndarray], mode: str) -> np.ndarray:
                return np.stack([np.concatenate([_gates(a[2 * d], order), _gates(a[2 * d + 1], order)])
                                 for d in range(len(a) // 2)])
        out["B"] = (handles, read, True)
    return out


def _keras_readers(layer: Any, flatten: Mapping[str, tuple[str, tuple[int, ...]]]) -> dict[str, tuple[list[Any], Reader, bool]]:
    import keras

    obj, kind = layer.obj, layer.kind
    out: dict[str, tuple[list[Any], Reader, bool]] = {}
    if kind == "tensor":
        return {"value": ([obj], _one(lambda a: a), True)}
    if kind == "dense":
        rows_cols = flatten.get(obj.name)

        def kernel(a: np.ndarray) -> np.ndarray:
            if rows_cols and rows_cols[0] == "rows":
                return layouts.reorder_flatten_rows(a, "HWC", rows_cols[1], "CHW")
            if rows_cols and rows_cols[0] == "cols":
                return layouts.reorder_unflatten_columns(a, None, "HWC", rows_cols[1], "CHW")[0]
            return a

        def bias(a: np.ndarray) -> np.ndarray:
            if rows_cols and rows_cols[0] == "cols":
                return layouts.reorder_flatten_rows(a[:, None], "HWC", rows_cols[1], "CHW")[:, 0]
            return a

        out["kernel"] = ([obj.kernel], _one(kernel), True)
        if obj.use_bias:
            out["bias"] = ([obj.bias], _one(bias), True)
        return out
    if kind == "conv":
        if isinstance(obj, keras.layers.DepthwiseConv2D):
            out["weight"] = ([obj.kernel], _one(layouts.depthwise_from_keras), True)
        else:
            out["weight"] = ([obj.kernel], _one(layouts.conv_from_keras), True)
    elif kind == "convtranspose":
        out["weight"] = ([obj.kernel], _one(layouts.conv_transpose_from_keras), True)
    elif kind in ("batchnorm", "layernorm", "groupnorm"):
        out["gamma"] = ([obj.gamma], _one(lambda a: a.reshape(-1)), True)
        if getattr(obj, "beta", None) is not None:
            out["beta"] = ([obj.beta], _one(lambda a: a.reshape(-1)), True)
        if kind == "batchnorm":
            out["mean"] = ([obj.moving_mean], _one(lambda a: a), False)
            out["var"] = ([obj.moving_variance], _one(lambda a: a), False)
        return out
    elif kind == "embedding":
        return {"table": ([obj.embeddings], _one(lambda a: a), True)}
    elif kind in ("lstm", "gru"):
        bidirectional = isinstance(obj, keras.layers.Bidirectional)
        cells = [obj.forward_layer.cell, obj.backward_layer.cell] if bidirectional else [obj.cell]
        order = layouts.LSTM_ONNX_TO_KERAS if kind == "lstm" else layouts.GRU_ONNX_TO_KERAS
        out["W"] = ([c.kernel for c in cells], lambda a, mode: np.stack([_gates(x.T, order) for x in a]), True)
        out["R"] = ([c.recurrent_kernel for c in cells],
                    lambda a, mode: np.stack([_gates(x.T, order) for x in a]), True)
        if cells[0].use_bias:
            def read(a: list[np.ndarray], mode: str) -> np.ndarray:
                if kind == "lstm" or a[0].ndim == 1:
                    return np.stack([_gates(x, order) for x in a])
                return np.stack([np.concatenate([_gates(x[0], order), _gates(x[1], order)]) for x in a])
            out["B"] = ([c.bias for c in cells], read, True)
        return out
    elif kind == "attention":
        for part, dense in (("q", obj.query_dense), ("k", obj.key_dense), ("v", obj.value_dense)):
            out[f"{part}_kernel"] = ([dense.kernel], _one(lambda a: a.reshape(a.shape[0], -1)), True)
            if dense.bias is not None:
                out[f"{part}_bias"] = ([dense.bias], _one(lambda a: a.reshape(-1)), True)
        out["out_kernel"] = ([obj.output_dense.kernel], _one(lambda a: a.reshape(-1, a.shape[-1])), True)
        if obj.output_dense.bias is not None:
            out["out_bias"] = ([obj.output_dense.bias], _one(lambda a: a), True)
        return out
    else:
        raise UsageError(f"gradient parity: Keras layer {layer.name!r} has kind {kind!r}, which has no reader")
    if getattr(obj, "use_bias", False) and getattr(obj, "bias", None) is not None:
        out["bias"] = ([obj.bias], _one(lambda a: a), True)
    return out


def keras_flatten_map(model: Any, channels_first_1d: bool = False) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Dense layers fed by a Flatten of a channels-last map ("rows") or reshaped into one ("cols").

    Keras flattens (H, W, C) where torch flattens (C, H, W); a 1-D (L, C) map counts only
    when the torch twin is channels-first in 1-D (``channels_first_1d``).
    """
    import keras

    from converters.targets.keras_target import _flatten

    out_of, in_of = keras.Operation.output.fget, keras.Operation.input.fget
    layers = _flatten(model.layers)
    found: dict[str, tuple[str, tuple[int, ...]]] = {}

    def spatial(shape: tuple[int, ...]) -> bool:
        return len(shape) == 3 or (len(shape) == 2 and channels_first_1d)

    for layer in layers:
        try:
            if isinstance(layer, keras.layers.Flatten):
                dims = tuple(int(d) for d in in_of(layer).shape[1:])
                for dense in layers:
                    if isinstance(dense, keras.layers.Dense) and in_of(dense) is out_of(layer) and spatial(dims):
                        found[dense.name] = ("rows", dims)
            elif isinstance(layer, keras.layers.Reshape):
                dims = tuple(int(d) for d in layer.target_shape)
                for dense in layers:
                    if isinstance(dense, keras.layers.Dense) and out_of(dense) is in_of(layer) and spatial(dims):
                        found[dense.name] = ("cols", dims)
        except (AttributeError, ValueError):  # a layer never called in this graph
            continue
    return found


def parameter_slots(torch_model: Any, keras_model: Any, torch_inputs: Sequence[np.ndarray] | None = None, *,
                    channels_first_1d: bool = False) -> list[Slot]:
    """Every parameter and running statistic of the twins, paired, in torch's forward order.

    Layers pair by name (zoo twins share names); the rest pair in order by kind and
    canonical shapes, as the port matches them.
    """
    from converters.targets import target_layers

    t_layers = target_layers(torch_model, torch_inputs)
    k_layers = target_layers(keras_model)
    k_by_name = {k.name: k for k in k_layers}
    pairs: list[tuple[Any, Any]] = []
    left_t, used_k = [], set()
    for t in t_layers:
        k = k_by_name.get(t.name)
        if k is not None and k.kind == t.kind:
            pairs.append((t, k))
            used_k.add(k.name)
        else:
            left_t.append(t)
    left_k = [k for k in k_layers if k.name not in used_k]
    for t in left_t:
        k = next((k for k in left_k if k.kind == t.kind and k.shapes == t.shapes), None)
        if k is None:
            raise UsageError(f"gradient parity: torch layer {t.name!r} ({t.kind}: {t.shapes}) has no Keras twin "
                             f"(unpaired Keras layers: {[x.name for x in left_k]})")
        left_k.remove(k)
        pairs.append((t, k))
    if left_k:
        raise UsageError(f"gradient parity: Keras layers {[k.name for k in left_k]} have no torch twin")
    order = {id(t): i for i, t in enumerate(t_layers)}
    pairs.sort(key=lambda p: order[id(p[0])])

    t_names = {id(p): n for n, p in [*torch_model.named_parameters(), *torch_model.named_buffers()]}
    flatten = keras_flatten_map(keras_model, channels_first_1d)
    slots: list[Slot] = []
    for t, k in pairs:
        tr, kr = _torch_readers(t), _keras_readers(k, flatten)
        if set(tr) != set(kr):
            raise UsageError(f"gradient parity: {t.name!r} has {sorted(tr)} in torch but {sorted(kr)} in Keras "
                             "(a bias on one side only?)")
        layer = t.name if t.name == k.name else f"{t.name} <-> {k.name}"
        for role, (th, tread, trainable) in tr.items():
            kh, kread, _ = kr[role]
            note = ("torch keeps b_ih and b_hh; Keras their sum: compared as the sum, gradients as either's"
                    if t.kind == "lstm" and role == "B" else "")
            if t.kind == "dense" and k.obj.name in flatten:
                note = f"Keras {flatten[k.obj.name][0]} in H, W, C order: permuted to C, H, W"
            slots.append(Slot(layer, role, t.kind, trainable, th, kh, tread, kread,
                              [t_names.get(id(h), "?") for h in th], [str(getattr(v, "path", v.name)) for v in kh],
                              note, t, k))
    return slots


# ----------------------------------------------------------------------------- training mode and losses


@contextlib.contextmanager
def training_mode(torch_model: Any, keras_model: Any, *, restore: bool = True) -> Iterator[list[str]]:
    """Both twins in training mode with dropout off; yields the dropout layers switched off.

    With ``restore`` the weights, running statistics and modes are put back afterwards.
    """
    import copy

    import keras
    from torch import nn

    from converters.targets.keras_target import _flatten

    was_training = torch_model.training
    state = copy.deepcopy(torch_model.state_dict()) if restore else None
    weights = keras_model.get_weights() if restore else None
    switched: list[str] = []
    torch_model.train()
    for name, m in torch_model.named_modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.eval()
            if m.p > 0:
                switched.append(f"torch {name} (p={m.p})")
    rates: list[tuple[Any, float]] = []
    for layer in _flatten(keras_model.layers):
        if isinstance(layer, (keras.layers.Dropout, keras.layers.SpatialDropout1D, keras.layers.SpatialDropout2D,
                              keras.layers.GaussianDropout, keras.layers.AlphaDropout)):
            rates.append((layer, float(layer.rate)))
            if layer.rate > 0:
                switched.append(f"Keras {layer.name} (rate={layer.rate})")
            layer.rate = 0.0
    try:
        yield switched
    finally:
        for layer, rate in rates:
            layer.rate = rate
        torch_model.train(was_training)
        if state is not None:
            torch_model.load_state_dict(state)
        if weights is not None:
            keras_model.set_weights(weights)


@dataclass
class Loss:
    """The loss both twins minimise, with its seeded targets in each framework's layout."""

    kind: str
    torch_targets: list[np.ndarray]
    keras_targets: list[np.ndarray]

    def torch(self, outputs: Sequence[Any]) -> Any:
        import torch
        import torch.nn.functional as F

        if self.kind == "xent":
            return F.cross_entropy(outputs[0], torch.from_numpy(self.torch_targets[0]))
        return sum(F.mse_loss(o, torch.from_numpy(t)) for o, t in zip(outputs, self.torch_targets, strict=True))

    def keras(self, outputs: Sequence[Any]) -> Any:
        from keras import ops

        if self.kind == "xent":
            return ops.mean(ops.sparse_categorical_crossentropy(self.keras_targets[0], outputs[0], from_logits=True))
        total = None
        for o, t in zip(outputs, self.keras_targets, strict=True):
            term = ops.mean(ops.square(o - t))
            total = term if total is None else total + term
        return total

    def describe(self) -> str:
        if self.kind == "xent":
            return "cross-entropy on seeded labels (mean over the batch)"
        return "mean squared error against seeded standard-normal targets (summed over outputs)"


def make_loss(spec: Any, kind: str, batch: int, seed: int, step: int = 0) -> Loss:
    """Seeded targets for ``spec``'s outputs (``step`` gives each training step its own)."""
    if kind not in LOSSES:
        raise UsageError(f"unknown loss {kind!r}; expected one of {', '.join(LOSSES)}")
    rng = np.random.default_rng(seed + TARGET_SEED_OFFSET + step)
    if kind == "xent":
        if len(spec.outputs) != 1 or len(spec.outputs[0].shape) != 1:
            raise UsageError(f"loss 'xent' needs one (batch, classes) output; {spec.name} has "
                             f"{[(o.name, o.shape) for o in spec.outputs]}: use 'mse'")
        labels = rng.integers(0, spec.outputs[0].shape[0], size=batch).astype(np.int64)
        return Loss(kind, [labels], [labels])
    targets = [rng.standard_normal((batch, *o.shape)).astype(np.float32) for o in spec.outputs]
    return Loss(kind, targets, [o.to_framework(t, "tf") for o, t in zip(spec.outputs, targets, strict=True)])


def torch_step(model: Any, inputs: Sequence[np.ndarray], loss: Loss) -> tuple[float, dict[int, np.ndarray]]:
    """Forward, loss and backward in torch: the loss and every parameter's gradient (by id)."""
    import torch

    model.zero_grad(set_to_none=True)
    out = model(*[torch.from_numpy(np.ascontiguousarray(a)) for a in inputs])
    value = loss.torch(out if isinstance(out, (tuple, list)) else [out])
    value.backward()
    grads = {id(p): (p.grad.detach().numpy().copy() if p.grad is not None else np.zeros(tuple(p.shape), np.float32))
             for p in model.parameters()}
    return float(value.detach()), grads


def keras_step(model: Any, inputs: Sequence[np.ndarray], loss: Loss) -> tuple[float, dict[int, np.ndarray], list[Any]]:
    """Forward (training=True), loss and gradients in Keras: loss, gradients by id, the raw gradients."""
    import keras
    import tensorflow as tf

    variables = model.trainable_variables
    tensors = [tf.convert_to_tensor(a) for a in inputs]
    with tf.GradientTape() as tape:
        out = model(tensors if len(tensors) > 1 else tensors[0], training=True)
        value = loss.keras(out if isinstance(out, (tuple, list)) else [out])
    raw = tape.gradient(value, variables)
    grads = {id(v): (np.asarray(tf.convert_to_tensor(g)) if g is not None
                     else np.zeros(tuple(int(d) for d in v.shape), np.float32)) for v, g in zip(variables, raw, strict=True)}
    return float(keras.ops.convert_to_numpy(value)), grads, list(raw)


# ----------------------------------------------------------------------------- report


@dataclass
class ParamRow:
    """One canonical tensor (a gradient, a parameter or a running statistic) compared across the twins."""

    name: str
    layer: str
    role: str
    kind: str
    torch: list[str]
    keras: list[str]
    shape: list[int]
    scale: float
    atol: float
    rtol: float
    max_abs: float
    max_rel: float
    passed: bool
    explain: str
    statistic: bool = False
    note: str = ""

    @property
    def relative_error(self) -> float:
        return self.max_abs / self.scale if self.scale > 0 else self.max_abs

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["relative_error"] = self.relative_error
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def compare_slot(slot: Slot, t_value: np.ndarray, k_value: np.ndarray, atol_rel: float, rtol: float,
                 reference: str = "torch", scale: float | None = None, extra: np.ndarray | None = None) -> ParamRow:
    """Compare one canonical tensor; ``atol_rel`` is relative to ``scale`` (default max |reference|);
    ``extra`` adds an element-wise allowance (same shape) to the absolute tolerance."""
    ref, other = (t_value, k_value) if reference == "torch" else (k_value, t_value)
    s = (float(np.max(np.abs(ref))) if ref.size else 0.0) if scale is None else float(scale)
    atol = atol_rel * s
    a, b = ("tf" if reference == "torch" else "torch"), reference
    c: Comparison = compare(other, ref, atol=atol, rtol=rtol, a=a, b=b, output=slot.name)
    passed, explain = c.passed, c.explain()
    if extra is not None and c.problem is None:
        diff = np.abs(other.astype(np.float64) - ref)
        excess = diff - (atol + rtol * np.abs(ref.astype(np.float64)) + extra)
        bad = ~(excess <= 0)
        passed = not bool(np.any(bad))
        if not passed:
            i = np.unravel_index(int(np.nanargmax(np.where(bad, excess, -np.inf))), ref.shape)
            explain = (f"{a} vs {b} [{slot.name}]: {int(bad.sum())} of {ref.size} elements over tolerance (atol "
                       f"{atol:.3g} + per-element allowance up to {float(np.max(extra)):.3g}); worst at index "
                       f"{tuple(int(j) for j in i)}: {float(other[i])!r} vs {float(ref[i])!r}, |a-b| = {float(diff[i]):.3g}, "
                       f"allowed {float(atol + extra[i]):.3g}")
        else:
            explain = f"{a} vs {b} [{slot.name}]: passed, max |a-b| = {c.max_abs:.3g} (atol {atol:.3g} + allowance)"
    return ParamRow(slot.name, slot.layer, slot.role, slot.kind, slot.torch_names, slot.keras_names,
                    list(ref.shape), s, atol, rtol, c.max_abs, c.max_rel, passed, explain,
                    statistic=not slot.trainable, note=slot.note)


def layer_scales(values: Sequence[tuple[Slot, np.ndarray]]) -> dict[str, float]:
    """The largest |value| over each layer's tensors: the scale each of them is judged against.

    A gradient that is zero in exact arithmetic (a bias just before a training-mode
    BatchNorm, an attention key bias: softmax ignores a shift shared by all keys) is
    pure rounding noise; judged against its own size it would always "diverge".
    """
    scales: dict[str, float] = {}
    for slot, value in values:
        scales[slot.layer] = max(scales.get(slot.layer, 0.0), float(np.max(np.abs(value))) if value.size else 0.0)
    return scales


@dataclass
class GradReport:
    loss: dict[str, Any]
    rows: list[ParamRow]
    tolerance: dict[str, Any]
    mode: str
    notes: list[str] = field(default_factory=list)
    batch: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.loss.get("passed", True)) and all(r.passed for r in self.rows)

    @property
    def first_divergence(self) -> str | None:
        return next((r.name for r in self.rows if not r.passed), None)

    def to_dict(self) -> dict[str, Any]:
        first = next((r for r in self.rows if not r.passed), None)
        return {"passed": self.passed, "loss": self.loss, "mode": self.mode, "batch": self.batch,
                "tolerance": self.tolerance,
                "first_divergence": self.first_divergence, "first_divergence_detail": first.to_dict() if first else None,
                "parameters": [r.to_dict() for r in self.rows], "notes": self.notes}

    def format(self) -> str:
        lines = [f"gradients ({self.loss['kind']}: torch {self.loss['torch']:.6g}, tf {self.loss['tf']:.6g}; "
                 f"{len(self.rows)} parameters)"]
        lines += _table(self.rows)
        lines.append(f"first divergent parameter: {self.first_divergence}" if self.first_divergence
                     else "every gradient within tolerance")
        return "\n".join(lines)


def _table(rows: Sequence[ParamRow], limit: int = 12) -> list[str]:
    out = [f"  {'parameter':<56}{'max_abs':>10}{'rel_err':>10}{'atol':>10}  verdict"]
    first = next((i for i, r in enumerate(rows) if not r.passed), None)
    shown = [r for i, r in enumerate(rows) if i < limit or i == first or not r.passed][: limit + 8]
    for r in shown:
        out.append(f"  {r.name[:55]:<56}{r.max_abs:>10.2e}{r.relative_error:>10.2e}{r.atol:>10.2e}  "
                   f"{'ok' if r.passed else 'FAIL'}")
    if len(rows) > len(shown):
        out.append(f"  ... {len(rows) - len(shown)} more within tolerance")
    return out


def grad_tolerance(tolerance: Any, strict: bool = False) -> tuple[float, float, str]:
    """(atol relative to each gradient's scale, rtol, reason) from the spec's output tolerance."""
    factor = 1.0 if strict else math.sqrt(2.0)
    why = ("the spec's output tolerance, taken as given (strict)" if strict else
           "sqrt(2) x the spec's output tolerance: a gradient accumulates float32 rounding forward through the "
           "model and back again (about 2D layers against the output's D), relative to each gradient's max |g|")
    return tolerance.atol * factor, tolerance.rtol * factor, f"{why}; spec: {tolerance.reason}"


MIN_VALUES_PER_CHANNEL = 8


@dataclass
class BatchChoice:
    """The batch size for training-mode parity and why: BatchNorm conditioning (see ``choose_batch``)."""

    requested: int
    used: int
    values_per_channel: dict[str, int]  # at the requested batch, per training-mode BatchNorm
    condition: dict[str, float]  # kappa per BatchNorm at the batch used
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        worst = max(self.condition.items(), key=lambda kv: kv[1], default=("", 0.0))
        return {"requested": self.requested, "used": self.used, "reason": self.reason,
                "min_values_per_channel": min(self.values_per_channel.values(), default=None),
                "worst_batchnorm_condition": {"layer": worst[0], "kappa": worst[1]} if worst[0] else None}


def _batchnorm_stats(torch_model: Any, inputs: Sequence[np.ndarray]) -> tuple[dict[str, int], dict[str, float]]:
    """Per training-mode BatchNorm: values per channel, and kappa = max|x| / (max|y| sqrt(min_c var_c + eps)),
    how much it amplifies a relative rounding error of its input (about 1 when well conditioned)."""
    import torch
    from torch import nn

    from converters.torch_hooks import run_with_hooks

    counts: dict[str, int] = {}
    kappa: dict[str, float] = {}

    def hook(name: str) -> Callable[..., None]:
        def record(mod: Any, args: Any, out: Any) -> None:
            x, y = args[0].detach().double(), out.detach().double()
            counts[name] = int(x.numel() // x.shape[1])
            var = x.var(dim=[0, *range(2, x.ndim)], unbiased=False)
            var = var[var > 0]
            if var.numel() and float(y.abs().max()) > 0:
                kappa[name] = float(x.abs().max() / (y.abs().max() * torch.sqrt(var.min() + mod.eps)))
        return record

    norms = [(n, m) for n, m in torch_model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return counts, kappa
    was = torch_model.training
    state = {k: v.clone() for k, v in torch_model.state_dict().items()}
    try:
        torch_model.train()
        run_with_hooks(torch_model, inputs, norms, hook)
    finally:
        torch_model.load_state_dict(state)
        torch_model.train(was)
    return counts, kappa


def choose_batch(spec: Any, torch_model: Any, batch: int, seed: int,
                 min_values: int = MIN_VALUES_PER_CHANNEL) -> BatchChoice:
    """``batch``, or the smallest larger one with which every training-mode BatchNorm normalises over
    at least ``min_values`` values per channel.

    Over 2 values per channel (a batch of 2 on a 1x1 map) the batch variance can be tiny
    and (x - mean) / sqrt(var + eps) amplifies the float32 rounding of its input by 100x
    and more (kappa, measured on resnet18 at batch 2: up to 185; at 8 values per channel
    at most 5); the two frameworks then differ by more than a port bug needs to show.
    That is a property of the data, not of either framework, so the batch is raised
    instead of the tolerance.
    """
    t_in = list(spec.inputs_for("torch", spec.example_inputs(batch, seed)).values())
    counts, kappa = _batchnorm_stats(torch_model, t_in)
    if not counts or min(counts.values()) >= min_values:
        return BatchChoice(batch, batch, counts, kappa)
    per_sample = min(c / batch for c in counts.values())
    used = max(batch, int(math.ceil(min_values / per_sample)))
    worst = min(counts, key=lambda n: counts[n])
    _, kappa_used = _batchnorm_stats(torch_model, list(spec.inputs_for("torch", spec.example_inputs(used, seed)).values()))
    reason = (f"BatchNorm {worst!r} would normalise over {counts[worst]} values per channel at batch {batch} "
              f"(kappa {kappa.get(worst, float('nan')):.3g}: float32 rounding amplified that much); batch {used} "
              f"gives it {int(per_sample * used)}, at least {min_values}")
    return BatchChoice(batch, used, counts, kappa_used, reason)


def gradient_parity(spec: Any, torch_model: Any, keras_model: Any, inputs: Mapping[str, np.ndarray], *,
                    loss: str = "mse", seed: int = 0, strict: bool = False, reference: str = "torch",
                    min_values: int = MIN_VALUES_PER_CHANNEL) -> GradReport:
    """Gradients of the same loss on the same batch in both twins (``inputs`` in torch layout; a
    larger seeded batch from ``spec`` when BatchNorm needs it, see ``choose_batch``).

    The twins are left as they were (weights, running statistics, modes).
    """
    batch = int(next(iter(inputs.values())).shape[0])
    choice = choose_batch(spec, torch_model, batch, seed, min_values)
    if choice.used != batch:
        inputs = spec.example_inputs(choice.used, seed)
    t_in = list(spec.inputs_for("torch", inputs).values())
    k_in = list(spec.inputs_for("tf", inputs).values())
    objective = make_loss(spec, loss, choice.used, seed)
    slots = parameter_slots(torch_model, keras_model, t_in,
                            channels_first_1d=any(s.layout == "NCL" for s in spec.inputs))
    atol_rel, rtol, reason = grad_tolerance(spec.tolerance, strict)
    with training_mode(torch_model, keras_model) as switched:
        t_loss, t_grads = torch_step(torch_model, t_in, objective)
        k_loss, k_grads, _ = keras_step(keras_model, k_in, objective)
    values = [(slot, slot.torch_read([t_grads[id(h)] for h in slot.torch], "grad"),
               slot.keras_read([k_grads[id(h)] for h in slot.keras], "grad")) for slot in slots if slot.trainable]
    scales = layer_scales([(s, t if reference == "torch" else k) for s, t, k in values])
    rows = [compare_slot(slot, tg, kg, atol_rel, rtol, reference, scales[slot.layer]) for slot, tg, kg in values]
    loss_tol = atol_rel * max(abs(t_loss), abs(k_loss))
    diff = abs(t_loss - k_loss)
    notes = [f"dropout switched off in both twins ({', '.join(switched)}): the frameworks' random streams "
             "cannot match" if switched else "no dropout with a non-zero rate in either twin"]
    if choice.reason:
        notes.append(f"batch {choice.used} instead of {batch}: {choice.reason}")
    return GradReport(
        batch=choice.to_dict(),
        loss={"kind": loss, "description": objective.describe(), "torch": t_loss, "tf": k_loss, "abs_diff": diff,
              "atol": loss_tol, "passed": diff <= loss_tol},
        rows=rows, tolerance={"atol": atol_rel, "rtol": rtol, "scale_relative": True, "strict": strict,
                              "reason": reason},
        mode="training mode: BatchNorm uses batch statistics; dropout off", notes=notes)
