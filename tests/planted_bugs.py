"""A catalogue of planted one-line bugs in small twin pairs, and the harness that runs the checker on them.

Four twin pairs are defined here (not in the zoo), each built by one function that takes
the name of a bug: ``vision`` (conv, BatchNorm, pooling, upsampling), ``seq`` (embedding,
LayerNorm, GRU), ``attn`` (causal self-attention whose torch mask is built from constants)
and ``mlp`` (fused activations, regularisers, frozen parameters). Each bug is one line on one
side, written where the builder tests ``bug == ...``. Its ``Bug`` entry says at which level the
checker must see it (``outputs``: the output comparison fails and localisation names the
layer; ``grads`` and ``train``: the outputs agree but gradient or training-step parity fails)
and the layer it must be localised to (``adam``: the Adam run fails and the SGD run passes).

The harness runs the checker's own parts on the pair (no ONNX: the weights are copied through
the target table that the port writes with, ``converters.targets``): the output comparison with
the spec's tolerance, ``localize``, ``gradient_parity`` and ``train_parity``. ``python
tests/planted_bugs.py`` runs the whole matrix (3 seeds x 2 batch sizes) and prints the table.
``run_pipeline`` gives the same verdict through the real pipeline (``parity.api.check_models``:
ONNX export, port, every runtime), which tests/test_planted_bugs.py compares with the harness's.

The mlp twins also train with their own optimizers (``user_optimizers``: AdamW, weight decay on
the kernels only); the optimiser bugs change one of those two optimizers, and must fail that run
alone, localised to the parameters decayed on one side only.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

LEVELS = ("outputs", "grads", "train")
SEEDS = (0, 1, 2)
BATCHES = (2, 4)


@dataclass(frozen=True)
class Bug:
    name: str
    pair: str
    side: str  # "torch" or "tf": where the one line is
    area: str
    level: str  # "outputs" | "grads" | "train"
    layer: str  # where it must be localised ("adam": the Adam run only)
    what: str


BUGS = [
    Bug("bn_eps_keras_default", "vision", "tf", "normalisation", "outputs", "bn", "BatchNormalization epsilon left at 1e-3"),
    Bug("bn_momentum_unconverted", "vision", "tf", "normalisation", "train", "bn", "Keras momentum=0.1 (torch's value)"),
    Bug("leaky_relu", "vision", "torch", "activations", "outputs", "act", "nn.LeakyReLU(0.1) for ReLU"),
    Bug("fused_elu", "vision", "tf", "activations", "outputs", "conv2", "Conv2D(activation='elu') for 'relu'"),
    Bug("head_softmax", "vision", "tf", "activations", "outputs", "head", "Dense(activation='softmax') on one side"),
    Bug("reflect_padding", "vision", "torch", "padding/pooling", "outputs", "conv1", "padding_mode='reflect'"),
    Bug("avgpool_for_maxpool", "vision", "tf", "padding/pooling", "outputs", "pool", "AveragePooling2D for MaxPooling2D"),
    Bug("count_include_pad", "vision", "torch", "padding/pooling", "outputs", "avg", "count_include_pad=True"),
    Bug("bilinear_upsampling", "vision", "tf", "resampling", "outputs", "up", "UpSampling2D(interpolation='bilinear')"),
    Bug("frozen_bn_keras", "vision", "tf", "frozen layers", "grads", "bn", "bn.trainable = False"),
    Bug("frozen_conv_torch", "vision", "torch", "frozen layers", "grads", "conv1", "conv1.weight.requires_grad_(False)"),
    Bug("l2_head_keras", "vision", "tf", "regularisation", "grads", "head", "kernel_regularizer=L2(1e-2) on head"),
    Bug("ln_eps_keras_default", "seq", "tf", "normalisation", "outputs", "ln", "LayerNormalization epsilon left at 1e-3"),
    Bug("gru_time_major", "seq", "torch", "recurrent", "outputs", "gru", "nn.GRU without batch_first=True"),
    Bug("gru_hard_sigmoid", "seq", "tf", "recurrent", "outputs", "gru", "recurrent_activation='hard_sigmoid'"),
    Bug("gru_relu", "seq", "tf", "recurrent", "outputs", "gru", "GRU(activation='relu')"),
    Bug("frozen_embedding_keras", "seq", "tf", "embeddings", "grads", "emb", "emb.trainable = False"),
    Bug("frozen_embedding_torch", "seq", "torch", "embeddings", "grads", "emb", "emb.weight.requires_grad_(False)"),
    Bug("padding_idx", "seq", "torch", "embeddings", "grads", "emb", "nn.Embedding(padding_idx=0)"),
    Bug("l1_head_torch", "seq", "torch", "regularisation", "grads", "head", "regularizers={'kernel': {'l1': 1e-2}}"),
    Bug("no_causal_mask_keras", "attn", "tf", "masking", "outputs", "mha", "use_causal_mask=False"),
    Bug("mask_tril", "attn", "torch", "masking", "outputs", "mha", "torch.tril(..., -1) for torch.triu(..., 1)"),
    Bug("query_scaled_twice", "attn", "torch", "attention", "outputs", "mha", "the query scaled by 1/2 before attention"),
    Bug("gelu_tanh_torch", "mlp", "torch", "activations", "outputs", "fc1", "F.gelu(approximate='tanh')"),
    Bug("sigmoid_for_tanh", "mlp", "tf", "activations", "outputs", "fc2", "Dense(activation='sigmoid') for 'tanh'"),
    Bug("adam_eps_defaults", "mlp", "tf", "optimiser", "train", "adam", "Adam epsilon left at each default"),
    Bug("weight_decay_torch", "mlp", "torch", "regularisation", "grads", "fc2", "regularizers={'kernel': {'l2': 1e-2}}"),
    Bug("frozen_head_keras", "mlp", "tf", "frozen layers", "grads", "head", "head.trainable = False"),
    Bug("frozen_bias_torch", "mlp", "torch", "frozen layers", "grads", "fc1", "fc1.bias.requires_grad_(False)"),
    Bug("adamw_default_decay", "mlp", "tf", "optimiser", "train", "fc1", "keras AdamW() (decay 0.004) for torch's 0.01"),
    Bug("adam_l2_for_adamw", "mlp", "torch", "optimiser", "train", "fc1", "torch Adam(weight_decay=) for AdamW"),
    Bug("bias_decayed_keras", "mlp", "tf", "optimiser", "train", "fc1.bias", "no exclude_from_weight_decay(bias)"),
    Bug("sgd_decay_coupled", "mlp", "torch", "optimiser", "train", "fc1", "torch SGD(weight_decay=) (coupled)"),
]
OPTIMIZER_BUGS = ("adamw_default_decay", "adam_l2_for_adamw", "bias_decayed_keras", "sgd_decay_coupled")


def _vision(bug: str) -> tuple[Any, Any, dict[str, tuple[int, ...]]]:
    import keras
    import torch
    from keras import layers as L
    from torch import nn

    class Vision(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 6, 3, padding=1, padding_mode="reflect" if bug == "reflect_padding" else "zeros")
            self.bn = nn.BatchNorm2d(6)
            self.act = nn.LeakyReLU(0.1) if bug == "leaky_relu" else nn.ReLU()
            self.pool = nn.MaxPool2d(2)
            self.up = nn.Upsample(scale_factor=2, mode="nearest")
            self.conv2 = nn.Conv2d(6, 4, 3, padding=1)
            self.avg = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=bug == "count_include_pad")
            self.head = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.up(self.pool(self.act(self.bn(self.conv1(x)))))
            return self.head(self.avg(torch.relu(self.conv2(x))).mean(dim=(2, 3)))

    x = inp = keras.Input((8, 8, 3))
    x = L.Conv2D(6, 3, padding="same", name="conv1")(x)
    bn = L.BatchNormalization(epsilon=1e-3 if bug == "bn_eps_keras_default" else 1e-5,
                              momentum=0.1 if bug == "bn_momentum_unconverted" else 0.9, name="bn")
    x = L.ReLU(name="act")(bn(x))
    x = (L.AveragePooling2D if bug == "avgpool_for_maxpool" else L.MaxPooling2D)(2, name="pool")(x)
    x = L.UpSampling2D(2, interpolation="bilinear" if bug == "bilinear_upsampling" else "nearest", name="up")(x)
    x = L.Conv2D(4, 3, padding="same", activation="elu" if bug == "fused_elu" else "relu", name="conv2")(x)
    x = L.GlobalAveragePooling2D()(L.AveragePooling2D(3, 1, padding="same", name="avg")(x))
    reg = keras.regularizers.L2(1e-2) if bug == "l2_head_keras" else None
    km = keras.Model(inp, L.Dense(3, activation="softmax" if bug == "head_softmax" else None,
                                  kernel_regularizer=reg, name="head")(x))
    tm = Vision()
    if bug == "frozen_bn_keras":
        bn.trainable = False
    if bug == "frozen_conv_torch":
        tm.conv1.weight.requires_grad_(False)
    return tm, km, {"x": (3, 8, 8)}


def _seq(bug: str) -> tuple[Any, Any, dict[str, Any]]:
    import keras
    from keras import layers as L
    from torch import nn

    class Seq(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(5, 8, padding_idx=0 if bug == "padding_idx" else None)
            self.ln = nn.LayerNorm(8)
            self.gru = nn.GRU(8, 8, batch_first=bug != "gru_time_major")
            self.head = nn.Linear(8, 3)
            if bug == "l1_head_torch":
                self.head.regularizers = {"kernel": {"l1": 1e-2}}

        def forward(self, ids: Any) -> Any:
            return self.head(self.gru(self.ln(self.emb(ids)))[0])

    ids = keras.Input((6,), dtype="int64", name="ids")
    emb = L.Embedding(5, 8, name="emb")
    x = L.LayerNormalization(epsilon=1e-3 if bug == "ln_eps_keras_default" else 1e-5, name="ln")(emb(ids))
    x = L.GRU(8, return_sequences=True, reset_after=True,
              recurrent_activation="hard_sigmoid" if bug == "gru_hard_sigmoid" else "sigmoid",
              activation="relu" if bug == "gru_relu" else "tanh", name="gru")(x)
    km = keras.Model(ids, L.Dense(3, name="head")(x))
    tm = Seq()
    if bug == "frozen_embedding_keras":
        emb.trainable = False
    if bug == "frozen_embedding_torch":
        tm.emb.weight.requires_grad_(False)
    from zoo.spec import TensorSpec

    return tm, km, {"ids": TensorSpec("ids", (6,), "int64", "NL")}


def _attn(bug: str) -> tuple[Any, Any, dict[str, tuple[int, ...]]]:
    import keras
    import torch
    from keras import layers as L
    from torch import nn

    class Attn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
            self.head = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            n = x.shape[1]
            ones = torch.ones(n, n)
            upper = torch.tril(ones, -1) if bug == "mask_tril" else torch.triu(ones, 1)
            mask = upper * torch.finfo(torch.float32).min  # a causal mask built from constants
            q = x / 2 if bug == "query_scaled_twice" else x
            return self.head(self.mha(q, x, x, attn_mask=mask, need_weights=False)[0])

    x = inp = keras.Input((5, 8), name="x")
    a = L.MultiHeadAttention(2, 4, name="mha")(x, x, use_causal_mask=bug != "no_causal_mask_keras")
    return Attn(), keras.Model(inp, L.Dense(3, name="head")(a)), {"x": (5, 8)}


def _mlp(bug: str) -> tuple[Any, Any, dict[str, tuple[int, ...]]]:
    import keras
    import torch
    from keras import layers as L
    from torch import nn

    class MLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2, self.head = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)
            if bug == "weight_decay_torch":
                self.fc2.regularizers = {"kernel": {"l2": 1e-2}}

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = nn.functional.gelu(self.fc1(x), approximate="tanh" if bug == "gelu_tanh_torch" else "none")
            return self.head(torch.tanh(self.fc2(h)))

    x = inp = keras.Input((8,), name="x")
    x = L.Dense(16, activation="gelu", name="fc1")(x)
    x = L.Dense(16, activation="sigmoid" if bug == "sigmoid_for_tanh" else "tanh", name="fc2")(x)
    head = L.Dense(4, name="head")
    km = keras.Model(inp, head(x))
    tm = MLP()
    if bug == "frozen_head_keras":
        head.trainable = False
    if bug == "frozen_bias_torch":
        tm.fc1.bias.requires_grad_(False)
    return tm, km, {"x": (8,)}


def user_optimizers(bug: str, tm: Any, km: Any) -> tuple[Any, Any]:
    """The mlp twins' own optimizers: AdamW with weight decay 0.01 on the kernels only (torch parameter
    groups, Keras ``exclude_from_weight_decay``), or the optimiser bug's one line."""
    import keras
    import torch

    lr = 1e-4
    if bug == "sgd_decay_coupled":  # torch's SGD weight decay enters the momentum, Keras's does not
        return (torch.optim.SGD(tm.parameters(), lr=1e-3, momentum=0.9, weight_decay=0.01),
                keras.optimizers.SGD(1e-3, momentum=0.9, weight_decay=0.01))
    weights = [p for n, p in tm.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in tm.named_parameters() if not n.endswith("weight")]
    groups = [{"params": weights, "weight_decay": 0.01}, {"params": biases, "weight_decay": 0.0}]
    if bug == "adamw_default_decay":
        return torch.optim.AdamW(tm.parameters(), lr=lr), keras.optimizers.AdamW(lr, epsilon=1e-8)
    t_opt = torch.optim.Adam(groups, lr=lr) if bug == "adam_l2_for_adamw" else torch.optim.AdamW(groups, lr=lr)
    k_opt = keras.optimizers.AdamW(lr, weight_decay=0.01, epsilon=1e-8)  # torch's epsilon, not Keras's 1e-7
    if bug != "bias_decayed_keras":
        k_opt.exclude_from_weight_decay(var_names=["bias"])
    return t_opt, k_opt


PAIRS: dict[str, Callable[[str], tuple[Any, Any, dict[str, Any]]]] = {
    "vision": _vision, "seq": _seq, "attn": _attn, "mlp": _mlp}


@dataclass
class Outcome:
    bug: str  # "" for the correct pair
    pair: str
    seed: int
    batch: int
    seen: dict[str, bool]  # level -> failed there
    where: dict[str, str | None]  # level -> first divergence there

    @property
    def false_alarm(self) -> bool:
        return not self.bug and any(self.seen.values())


def build(pair: str, bug: str, seed: int) -> tuple[Any, Any, Any]:
    """The pair with ``bug`` planted (or none for ''), seeded, the torch weights copied into Keras
    through the target table; BatchNorm statistics randomised. Returns (torch, keras, spec)."""
    import keras
    import torch

    from converters.targets import target_layers
    from parity.check.user import user_pair
    from parity.diagnostics.slots import pair_layers

    keras.utils.set_random_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tm, km, shapes = PAIRS[pair](bug)
        for m in tm.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    tm.eval()
    spec = user_pair(tm, km, shapes, seed=seed).spec
    sample = list(spec.inputs_for("torch", spec.example_inputs(2, seed)).values())
    for t, k in pair_layers(target_layers(tm, sample), target_layers(km)):
        k.write(t.read(), {})
    return tm, km, spec


def run(pair: str, bug: str, seed: int, batch: int, levels: tuple[str, ...] = LEVELS) -> Outcome:
    """The checker's verdicts on one build at ``levels`` (outputs includes layer-by-layer localisation)."""
    from parity.compare import compare
    from parity.diagnostics.grads import gradient_parity
    from parity.diagnostics.localize import depth_tolerance, localize
    from parity.diagnostics.training import default_optimizer, train_parity
    from parity.diagnostics.user_optimizers import pair_config

    tm, km, spec = build(pair, bug, seed)
    inputs = spec.example_inputs(batch, seed)
    t_in, k_in = spec.inputs_for("torch", inputs), spec.inputs_for("tf", inputs)
    seen: dict[str, bool] = {}
    where: dict[str, str | None] = {}
    if "outputs" in levels:
        import torch

        with torch.no_grad():
            t_out = tm(*[torch.from_numpy(a) for a in t_in.values()]).numpy()
        k_out = np.asarray(km(list(k_in.values()) if len(k_in) > 1 else next(iter(k_in.values())), training=False))
        scale = float(np.max(np.abs(t_out)))
        c = compare(k_out, t_out, atol=spec.tolerance.absolute(scale), rtol=spec.tolerance.rtol)
        layers = localize(tm, km, list(t_in.values()), list(k_in.values()), tolerance=depth_tolerance(spec.tolerance))
        seen["outputs"], where["outputs"] = not c.passed, layers.first_divergence
        seen["layers"] = not layers.passed
    if "grads" in levels:
        grads = gradient_parity(spec, tm, km, inputs, seed=seed)
        seen["grads"], where["grads"] = not grads.passed, grads.first_divergence
    if "train" in levels:
        adam = default_optimizer("adam")
        if bug == "adam_eps_defaults":  # the one line: each framework's own epsilon
            adam = dataclasses.replace(adam, epsilon=None)
        configs = [default_optimizer("sgd"), adam]
        if pair == "mlp":  # the twins' own optimizers, weight decay included
            configs.append(pair_config(user_optimizers(bug, tm, km), tm, km))
        report = train_parity(spec, tm, km, steps=3, optimizers=configs, batch=batch, seed=seed)
        failed = [name for name, r in report.runs.items() if not r.passed]
        seen["train"] = bool(failed)
        if bug in OPTIMIZER_BUGS and failed != [configs[-1].run_name]:  # the default runs must not fail
            seen["train"] = False
        where["train"] = ("adam" if failed == ["adam"] and bug == "adam_eps_defaults" else
                          next((report.runs[n].first_divergence for n in failed), None))
    return Outcome(bug, pair, seed, batch, seen, where)


def run_pipeline(pair: str, bug: str, seed: int, batch: int, level: str = "outputs") -> Outcome:
    """The same verdict through the real pipeline: ``parity.api.check_models`` exports the torch twin to
    ONNX and ports its weights into the Keras twin (no target-table copy), then compares on torch, TF and
    ONNX Runtime; ``level`` picks the diagnostic (grads: ``grads=True``; train: 3 steps, the mlp
    twins with their own optimizers, the others with SGD)."""
    import keras
    import torch

    from parity.api import check_models

    keras.utils.set_random_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tm, km, shapes = PAIRS[pair](bug)
    kwargs: dict[str, Any] = {"grads": level == "grads", "train_steps": 3 if level == "train" else 0}
    if level == "train":
        kwargs["optimizers"] = user_optimizers(bug, tm, km) if pair == "mlp" else ("sgd",)
    result = check_models(tm, km, shapes, batch=batch, seed=seed, layers=True, **kwargs)
    seen = {"outputs": bool(result.failures), "layers": result.layers is not None and not result.layers.passed}
    where: dict[str, str | None] = {"outputs": result.layers.first_divergence if result.layers else None}
    if level == "grads":
        seen["grads"], where["grads"] = not result.gradients.passed, result.gradients.first_divergence
    if level == "train":
        failed = [r for r in result.training.runs.values() if not r.passed]
        seen["train"], where["train"] = bool(failed), failed[0].first_divergence if failed else None
    return Outcome(bug, pair, seed, batch, seen, where)


def localised(bug: Bug, where: str | None) -> bool:
    """Whether the first divergence names the bug's layer (a row "layer", "layer +act", "layer.role")."""
    if where is None:
        return False
    if bug.layer == "adam":
        return where == "adam"
    return where == bug.layer or where.startswith((bug.layer + " ", bug.layer + "."))


def levels_for(bug: Bug) -> tuple[str, ...]:
    return LEVELS[: LEVELS.index(bug.level) + 1]


def summary(seeds: tuple[int, ...] = SEEDS, batches: tuple[int, ...] = BATCHES,
            show: Callable[[str], None] | None = None) -> tuple[str, dict[str, int]]:
    """Run every bug and every correct pair at every seed and batch size; the table and the counts
    (``show`` is called with each line as it is ready)."""
    lines = _Lines(show)
    lines += [f"{'bug':<26}{'pair':<8}{'side':<7}{'area':<17}{'level':<9}{'layer':<10}caught  localised"]
    counts = {"runs": 0, "caught": 0, "localised": 0, "correct_runs": 0, "false_alarms": 0}
    for bug in BUGS:
        got = [run(bug.pair, bug.name, s, b, levels_for(bug)) for s in seeds for b in batches]
        caught = sum(o.seen[bug.level] for o in got)
        local = sum(o.seen[bug.level] and localised(bug, o.where[bug.level]) for o in got)
        counts["runs"] += len(got)
        counts["caught"] += caught
        counts["localised"] += local
        lines.add(f"{bug.name:<26}{bug.pair:<8}{bug.side:<7}{bug.area:<17}{bug.level:<9}{bug.layer:<10}"
                     f"{caught}/{len(got):<6}{local}/{len(got)}")
    for pair in PAIRS:
        got = [run(pair, "", s, b) for s in seeds for b in batches]
        alarms = sum(o.false_alarm for o in got)
        counts["correct_runs"] += len(got)
        counts["false_alarms"] += alarms
        lines.add(f"{'(correct pair)':<26}{pair:<8}{'':<7}{'':<17}{'all':<9}{'':<10}false alarms {alarms}/{len(got)}")
    lines.add(f"{len(BUGS)} bugs over {len(PAIRS)} pairs, seeds {list(seeds)} x batches {list(batches)}: caught "
                 f"{counts['caught']}/{counts['runs']}, localised {counts['localised']}/{counts['runs']}, false alarms "
                 f"{counts['false_alarms']} in {counts['correct_runs']} correct runs")
    return "\n".join(lines), counts


class _Lines(list):
    def __init__(self, show: Callable[[str], None] | None) -> None:
        super().__init__()
        self.show = show

    def add(self, line: str) -> None:
        self.append(line)
        if self.show is not None:
            self.show(line)

    def __iadd__(self, lines: Any) -> _Lines:
        for line in lines:
            self.add(line)
        return self


if __name__ == "__main__":
    import torch  # noqa: F401  (torch before TensorFlow)

    table, totals = summary(show=lambda line: print(line, flush=True))
    sys.exit(0 if totals["caught"] == totals["localised"] == totals["runs"] and not totals["false_alarms"] else 1)
