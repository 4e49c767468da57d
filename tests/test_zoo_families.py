"""Every zoo family: the twins share layer names, forward order and parameter counts, and,
with the torch twin's weights copied into the Keras twin, compute the same function.

The weight copy below is a small test-only helper (the per-layer layout transforms of
docs/numerics.md, "Parameter layouts"). It proves the twins agree before any ONNX porter
is involved; the porter's own tests go through ONNX.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

import zoo
from zoo.rnn import keras_rnn_names
from zoo.weights import randomize

MODELS = zoo.names()
SEQUENCE_MODELS = ["lstm", "gru", "bert"]

# torch parameter counts at the standard preset, from torchvision / Hugging Face
PUBLISHED_TORCH_COUNTS = {
    "resnet18": 11_689_512,
    "resnet50": 25_557_032,
    "mobilenet_v2": 3_504_872,
    "vit": 86_567_656,  # torchvision vit_b_16
    "bert": 109_482_240,  # bert-base-uncased with pooler
}


# ---------------------------------------------------------------------------------------
# enumerating parametric layers on both sides


def _twin_names(name: str, module: Any) -> list[str]:
    """The Keras layer names twinning a torch module: its own name, except that a stacked
    RNN module ``n`` of k layers stands for ``n.l0`` ... ``n.l{k-1}`` (see zoo.rnn)."""
    from torch import nn

    return keras_rnn_names(name, module.num_layers) if isinstance(module, nn.RNNBase) else [name]


def torch_layer_names(model: Any) -> list[str]:
    """Modules owning parameters, in registration order, as the Keras names twinning them."""
    return [k for n, m in model.named_modules() if list(m.parameters(recurse=False)) for k in _twin_names(n, m)]


def torch_call_order(spec: Any, model: Any) -> list[str]:
    """Parametric modules in the order the forward pass calls them (forward pre-hooks)."""
    from converters.torch_hooks import run_with_hooks

    modules = {n: m for n, m in model.named_modules() if list(m.parameters(recurse=False))}
    calls: list[str] = []
    inputs = list(spec.inputs_for("torch", spec.example_inputs(2, 0)).values())
    run_with_hooks(model, inputs, modules.items(), lambda n: lambda mod, args: calls.append(n), pre=True)
    return [k for n in dict.fromkeys(calls) for k in _twin_names(n, modules[n])]


def keras_layers(model: Any) -> list[Any]:
    """Layers with weights, in the model's layer order, flattened through nested models."""
    import keras

    out = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out.extend(keras_layers(layer))
        elif layer.weights:
            out.append(layer)
    return out


def torch_count(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def keras_trainable_count(model: Any) -> int:
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


# ---------------------------------------------------------------------------------------
# test-only weight copy torch -> Keras


def dense_layouts(spec: Any) -> tuple[dict[str, tuple[int, int, int]], dict[str, tuple[int, int, int]]]:
    """Dense layers whose input rows (after a flatten) or output columns (before a reshape)
    run over feature maps: {layer: (C, H, W)} for rows and for columns."""
    cfg = spec.config
    if spec.name == "cnn":
        return {"fc": (cfg.channels[1], cfg.image // 4, cfg.image // 4)}, {}
    if spec.name == "autoencoder":
        side = cfg.image // 2 ** len(cfg.channels)
        shape = (cfg.channels[-1], side, side)
        return {"encoder.fc": shape}, {"decoder.fc": shape}
    return {}, {}


def copy_torch_to_keras(spec: Any, tm: Any, km: Any) -> None:
    """Write every torch parameter (and BatchNorm statistic) into the Keras twin, by name;
    fail if a Keras weight is left unwritten or written twice."""
    import keras
    from torch import nn

    rows, cols = dense_layouts(spec)
    by_name = {layer.name: layer for layer in keras_layers(km)}
    written: list[int] = []

    def put(var: Any, value: np.ndarray) -> None:
        assert tuple(var.shape) == value.shape, f"{var.path}: Keras {tuple(var.shape)} vs torch {value.shape}"
        var.assign(np.ascontiguousarray(value, dtype=np.float32))
        written.append(id(var))

    def rnn_cell(layer: Any, p: dict[str, np.ndarray], suffix: str, gru: bool) -> None:
        w_ih, w_hh, b_ih, b_hh = (p[f"{k}{suffix}"] for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
        cell = layer.cell
        if gru:  # torch gates r, z, n; Keras z, r, h
            h = w_hh.shape[1]

            def order(a: np.ndarray) -> np.ndarray:
                return np.concatenate([a[h:2 * h], a[:h], a[2 * h:]])

            put(cell.kernel, order(w_ih).T)
            put(cell.recurrent_kernel, order(w_hh).T)
            put(cell.bias, np.stack([order(b_ih), order(b_hh)]))
        else:  # LSTM gates i, f, g(c), o on both sides
            put(cell.kernel, w_ih.T)
            put(cell.recurrent_kernel, w_hh.T)
            put(cell.bias, b_ih + b_hh)

    for name, m in tm.named_modules():
        p = {k: v.detach().numpy() for k, v in m.named_parameters(recurse=False)}
        if not p:
            continue
        if isinstance(m, (nn.LSTM, nn.GRU)):
            for i, keras_name in enumerate(keras_rnn_names(name, m.num_layers)):
                layer = by_name[keras_name]
                if m.bidirectional:
                    rnn_cell(layer.forward_layer, p, f"_l{i}", isinstance(m, nn.GRU))
                    rnn_cell(layer.backward_layer, p, f"_l{i}_reverse", isinstance(m, nn.GRU))
                else:
                    rnn_cell(layer, p, f"_l{i}", isinstance(m, nn.GRU))
            continue
        layer = by_name[name]
        if isinstance(m, nn.Linear):
            w, b = p["weight"], p.get("bias")
            if name in rows:  # input rows (C, H, W) -> (H, W, C)
                c, hh, ww = rows[name]
                w = w.reshape(-1, c, hh, ww).transpose(0, 2, 3, 1).reshape(w.shape[0], -1)
            if name in cols:  # output columns (C, H, W) -> (H, W, C)
                c, hh, ww = cols[name]
                w = w.reshape(c, hh, ww, -1).transpose(1, 2, 0, 3).reshape(w.shape[0], -1)
                b = b.reshape(c, hh, ww).transpose(1, 2, 0).reshape(-1) if b is not None else None
            put(layer.kernel, w.T)
            if b is not None:
                put(layer.bias, b)
        elif isinstance(m, nn.ConvTranspose2d):
            put(layer.kernel, p["weight"].transpose(2, 3, 1, 0))
            if "bias" in p:
                put(layer.bias, p["bias"])
        elif isinstance(m, (nn.Conv1d, nn.Conv2d)):
            w = p["weight"]
            if isinstance(layer, keras.layers.DepthwiseConv2D):
                c = m.in_channels
                put(layer.kernel, w.reshape(c, -1, *w.shape[2:]).transpose(2, 3, 0, 1))
            else:
                put(layer.kernel, w.transpose(*range(2, w.ndim), 1, 0))
            if "bias" in p:
                put(layer.bias, p["bias"])
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            put(layer.gamma, p["weight"])
            put(layer.beta, p["bias"])
            put(layer.moving_mean, m.running_mean.numpy())
            put(layer.moving_variance, m.running_var.numpy())
        elif isinstance(m, nn.LayerNorm):
            put(layer.gamma, p["weight"])
            put(layer.beta, p["bias"])
        elif isinstance(m, nn.Embedding):
            put(layer.embeddings, p["weight"])
        else:  # raw weights (class token, position embedding): one tensor, same layout
            assert len(p) == 1 and len(layer.weights) == 1, f"{name}: no copy rule for {type(m).__name__}"
            put(layer.weights[0], next(iter(p.values())))
    ids = {id(w) for w in km.weights}
    assert len(written) == len(set(written)), "a Keras weight was written twice"
    missing = [w.path for w in km.weights if id(w) not in set(written)]
    assert not missing, f"Keras weights not written by the copy: {missing}"
    assert set(written) <= ids


def randomize_torch(model: Any, seed: int) -> None:
    """Seeded non-trivial biases, BN statistics and LayerNorm scales (fresh ones are 1)."""
    import torch
    from torch import nn

    randomize(model, "torch", seed)
    rng = np.random.default_rng(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, m.weight.shape).astype(np.float32)))


@functools.cache
def twins(name: str, **overrides: Any) -> tuple[Any, Any, Any]:
    """(spec, torch twin, Keras twin) at the small preset, the Keras twin holding the torch weights."""
    spec = zoo.get(name, **overrides)
    tm, km = spec.build_torch(seed=0), spec.build_keras(seed=0)
    randomize_torch(tm, seed=0)
    copy_torch_to_keras(spec, tm, km)
    return spec, tm, km


def run_torch(spec: Any, model: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import torch

    with torch.no_grad():
        out = model(*[torch.from_numpy(a) for a in spec.inputs_for("torch", inputs).values()])
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return dict(zip(spec.output_names, [o.numpy() for o in outs], strict=True))


def run_keras(spec: Any, model: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    xs = list(spec.inputs_for("tf", inputs).values())
    out = model(xs if len(xs) > 1 else xs[0], training=False)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return spec.outputs_from("tf", dict(zip(spec.output_names, [np.asarray(o) for o in outs], strict=True)))


# ---------------------------------------------------------------------------------------
# structure


def test_every_family_is_registered_and_importing_the_zoo_imports_no_framework() -> None:
    assert set(MODELS) >= {"mlp", "cnn", "resnet18", "resnet50", "mobilenet_v2", "unet", "tcn", "lstm", "gru",
                           "bert", "vit", "autoencoder"}
    code = "import sys, zoo; zoo.names(); sys.exit(any(m in sys.modules for m in ('torch', 'tensorflow', 'keras')))"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.parametrize("name", MODELS)
def test_specs_have_both_presets_and_a_reasoned_tolerance(name: str) -> None:
    for preset in ("small", "standard"):
        spec = zoo.get(name, preset=preset)
        assert spec.preset == preset and {"small", "standard"} <= set(spec.presets)
        assert len(spec.tolerance.reason) > 40 and 0 < spec.tolerance.atol <= 1e-3
        assert bool(spec.param_difference) == bool(spec.param_difference_reason)


@pytest.mark.parametrize("name", MODELS)
def test_twins_share_layer_names_and_forward_order(name: str) -> None:
    spec, tm, km = twins(name)
    t_names = torch_layer_names(tm)
    k_names = [layer.name for layer in keras_layers(km)]
    assert t_names == k_names
    assert torch_call_order(spec, tm) == t_names, "torch modules must be registered in the order they run"
    assert not tm.training


@pytest.mark.parametrize("name", MODELS)
def test_parameter_counts_agree_at_small_preset(name: str) -> None:
    spec, tm, km = twins(name)
    assert torch_count(tm) - keras_trainable_count(km) == spec.param_difference


@pytest.mark.parametrize("name", MODELS)
def test_parameter_counts_at_standard_preset(name: str) -> None:
    import torch

    spec = zoo.get(name, preset="standard")
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        n_torch = torch_count(spec.torch_builder(spec.config))
    if name in PUBLISHED_TORCH_COUNTS:
        assert n_torch == PUBLISHED_TORCH_COUNTS[name]
    n_keras = keras_trainable_count(spec.build_keras(seed=0))
    assert n_torch - n_keras == spec.param_difference


# ---------------------------------------------------------------------------------------
# numerics: the twins compute the same function


VARIANTS = [pytest.param(name, {}, id=name) for name in MODELS] + [
    pytest.param("lstm", {"packed": False}, id="lstm-unpacked"),
]


@pytest.mark.parametrize("batch", [1, 5], ids=["batch1", "batch5"])
@pytest.mark.parametrize(("name", "overrides"), VARIANTS)
def test_twins_compute_the_same_function(name: str, overrides: dict[str, Any], batch: int) -> None:
    spec, tm, km = twins(name, **overrides)
    inputs = spec.example_inputs(batch, seed=batch)
    expected, got = run_torch(spec, tm, inputs), run_keras(spec, km, inputs)
    for out in spec.outputs:
        ref, val = expected[out.name], got[out.name]
        assert ref.shape == (batch, *out.shape) and val.shape == ref.shape
        assert np.isfinite(ref).all()
        scale = float(np.abs(ref).max())
        atol = spec.tolerance.absolute(scale)
        np.testing.assert_allclose(val, ref, atol=atol, rtol=spec.tolerance.rtol,
                                   err_msg=f"{name}.{out.name} (scale {scale:.3g}; {spec.tolerance.reason})")


# ---------------------------------------------------------------------------------------
# padding masks mask


def _valid_outputs(spec: Any, outputs: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    """Outputs with per-step ones restricted to valid positions (pads set to 0)."""
    return {k: np.where(mask[..., None] == 1, v, 0.0) if v.ndim == 3 else v for k, v in outputs.items()}


SEQUENCE_VARIANTS = [pytest.param(name, {}, id=name) for name in SEQUENCE_MODELS] + [
    pytest.param("lstm", {"packed": False}, id="lstm-unpacked"),
]


@pytest.mark.parametrize("framework", ["torch", "tf"])
@pytest.mark.parametrize(("name", "overrides"), SEQUENCE_VARIANTS)
def test_padded_token_ids_do_not_move_valid_outputs(name: str, overrides: dict[str, Any], framework: str) -> None:
    spec, tm, km = twins(name, **overrides)
    run = functools.partial(run_torch, spec, tm) if framework == "torch" else functools.partial(run_keras, spec, km)
    inputs = spec.example_inputs(5, seed=3)
    mask = inputs["attention_mask"]
    assert mask[0].all() and not mask[1].all(), "make_inputs must mix full and padded sequences"
    assert (inputs["input_ids"] < spec.config.vocab).all() and (inputs["input_ids"] >= 0).all()
    rng = np.random.default_rng(4)
    other_pads = dict(inputs, input_ids=np.where(mask == 1, inputs["input_ids"],
                                                 rng.integers(1, spec.config.vocab, mask.shape)))
    base = _valid_outputs(spec, run(inputs), mask)
    moved = _valid_outputs(spec, run(other_pads), mask)
    for k in base:
        # the same arithmetic on the same valid values: equal up to float noise, far below any leak
        np.testing.assert_allclose(moved[k], base[k], rtol=0, atol=1e-6 * float(np.abs(base[k]).max()))
    # and the check is not vacuous: a changed valid token does move the outputs
    other_valid = dict(inputs, input_ids=np.where(mask == 1, (inputs["input_ids"] % (spec.config.vocab - 1)) + 1,
                                                  inputs["input_ids"]))
    changed = _valid_outputs(spec, run(other_valid), mask)
    assert any(np.abs(changed[k] - base[k]).max() > 1e-4 for k in base)


def test_tcn_is_causal() -> None:
    """Changing the input from step t on leaves every output before t unchanged (both twins)."""
    spec, tm, km = twins("tcn")
    x = spec.example_inputs(2, seed=0)
    t = spec.config.seq_len // 2
    y = dict(x)
    y["x"] = x["x"].copy()
    y["x"][:, :, t:] += 1.0
    for run in (functools.partial(run_torch, spec, tm), functools.partial(run_keras, spec, km)):
        a, b = run(x)["y"], run(y)["y"]
        np.testing.assert_array_equal(a[:, :, :t], b[:, :, :t])
        assert np.abs(a[:, :, t:] - b[:, :, t:]).max() > 1e-3


def test_packed_lstm_does_not_depend_on_the_amount_of_padding() -> None:
    """Packing makes the backward direction start at the last valid step: a short sequence
    gets the same logits padded to the full length as unpadded (torch accepts any length)."""
    import torch

    spec, tm, _ = twins("lstm")
    inputs = spec.example_inputs(5, seed=3)
    n = int(inputs["attention_mask"][1].sum())
    assert n < spec.config.seq_len
    padded = run_torch(spec, tm, inputs)["logits"][1]
    with torch.no_grad():
        alone = tm(torch.from_numpy(inputs["input_ids"][1:2, :n]), torch.from_numpy(inputs["attention_mask"][1:2, :n]))
    np.testing.assert_allclose(alone.numpy()[0], padded, rtol=1e-6, atol=1e-6 * float(np.abs(padded).max()))
