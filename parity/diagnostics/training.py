"""Training-step parity: N optimizer steps on the same batches in both twins, then everything compared.

Each run starts from the twins as they are (restored afterwards) and takes ``steps``
steps of SGD with momentum or Adam on seeded batches (a new batch and new targets per
step, the same in both frameworks), BatchNorm in training mode, dropout off (each
framework draws dropout masks from its own random stream; no seed makes them equal).
Compared: the loss at every step, then every parameter and every running statistic.

Hyperparameters are aligned explicitly, and the report says how:

- SGD: torch ``v = mu v + g; p -= lr v`` and Keras ``v = mu v - lr g; p += v`` are the
  same update for a constant learning rate (no dampening, no Nesterov, no weight decay).
- Adam: the epsilons default differently (torch 1e-8, Keras 1e-7) and sit in different
  places: torch divides by ``sqrt(v_hat) + eps``, Keras by ``sqrt(v) + eps`` before the
  bias correction, i.e. by ``sqrt(v_hat) + eps / sqrt(1 - beta2^t)``. Keras's epsilon is
  therefore set to ``eps * sqrt(1 - beta2^t)`` before step t, which makes the two
  updates equal in exact arithmetic. ``epsilon=None`` leaves each framework's default in
  place (the classic porting slip; it shows up only here).
- BatchNorm momentum: torch's ``m`` weighs the new batch (new = (1 - m) old + m batch),
  Keras's ``momentum`` the old value, so Keras momentum must be ``1 - m``. The twins are
  trained as built; the report lists each pair and whether it is converted.
- Running variance: torch tracks the unbiased batch variance (x n / (n - 1), n values
  per channel), Keras the biased one. The comparison accounts for it exactly: a
  forward hook records each step's biased batch variance, and torch's running variance
  is compared after subtracting sum_t m (1 - m)^(N-1-t) var_t / (n - 1).
- LSTM biases: torch has b_ih and b_hh per gate, Keras one bias (their sum). Trained as
  two parameters, their sum moves twice as fast as Keras's bias, so for the run b_hh is
  folded into b_ih and frozen; the canonical bias compared is the sum.
- Embedding gradients: TF hands them over as IndexedSlices, which Keras applies to the
  looked-up rows only (a "lazy" Adam); they are densified, as torch's Adam is dense.
- Parameters whose gradient is zero in exact arithmetic (under 1e-5 of their layer's
  largest gradient in both frameworks: a bias just before a training-mode BatchNorm, an
  attention key bias) are frozen in both twins: their gradient is rounding noise, which
  Adam would normalise into full-size steps in directions no two frameworks share.

Default hyperparameters: SGD lr 1e-3, momentum 0.9; Adam lr 1e-4, betas (0.9, 0.999),
eps 1e-8. Small enough that 5 steps stay out of the chaotic regime in which rounding
differences grow exponentially (resnet50 under Adam at lr 1e-3: the loss gap grows from
1e-5 to 1e-3 of the loss in four steps), large enough that every parameter moves.

Tolerances grow with steps. A parameter is judged against the size of its layer's
update (max |p_N - p_0|): each step's update carries the gradient's rounding
(``parity.diagnostics.grads``: sqrt(2) x the spec's output tolerance), and after t steps those
errors, fed back through the changed parameters, have grown by up to a factor t, so
step t gets ``t x`` that tolerance (losses too, relative to the loss). A float32 floor
of ``4 * N * eps * max|p|`` covers the rounding of storing p + update in each framework.
Under Adam each element also gets ``sum_t lr * 10 rho S_t / (sqrt(v_hat_t) + eps)``:
Adam divides every gradient element by its own running RMS, so an element whose gradient
is near its layer's rounding noise (rho x the layer's largest gradient S_t, rho measured
at the first step where both twins hold the same parameters) takes an update whose error
is no longer small against the update itself. Running statistics are judged against
their own scale. ``strict`` takes the spec's tolerance as given, without the sqrt(2),
the growth and the Adam allowance.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from parity.diagnostics.grads import (
    MIN_VALUES_PER_CHANNEL,
    BatchChoice,
    ParamRow,
    Slot,
    _table,
    choose_batch,
    compare_slot,
    keras_step,
    layer_scales,
    make_loss,
    parameter_slots,
    torch_step,
    training_mode,
)
from parity.errors import UsageError

F32_EPS = float(np.finfo(np.float32).eps)
OPTIMIZERS = ("sgd", "adam")
DEFAULT_EPSILON = {"torch": 1e-8, "tf": 1e-7}


@dataclass(frozen=True)
class OptimizerConfig:
    """One optimizer's hyperparameters, given once and set on both sides."""

    name: str
    lr: float
    momentum: float = 0.9  # sgd
    beta1: float = 0.9  # adam
    beta2: float = 0.999
    epsilon: float | None = 1e-8  # adam; None: each framework's own default (not aligned)

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "lr": self.lr}
        if self.name == "sgd":
            d.update(momentum=self.momentum, nesterov=False, dampening=0.0, weight_decay=0.0)
        else:
            eps = self.epsilon
            d.update(beta1=self.beta1, beta2=self.beta2, weight_decay=0.0, amsgrad=False)
            d["epsilon"] = ({"torch": eps, "tf": f"{eps} * sqrt(1 - beta2^t) per step (= torch's placement)",
                             "aligned": True} if eps is not None else
                            {"torch": DEFAULT_EPSILON["torch"], "tf": DEFAULT_EPSILON["tf"], "aligned": False,
                             "note": "each framework's default, and Keras adds it before the bias correction"})
        return d


def default_optimizer(name: str) -> OptimizerConfig:
    if name == "sgd":
        return OptimizerConfig("sgd", lr=1e-3, momentum=0.9)
    if name == "adam":
        return OptimizerConfig("adam", lr=1e-4)
    raise UsageError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)} (or 'both')")


class _Optimizers:
    """The same optimizer in both frameworks, stepped together."""

    def __init__(self, cfg: OptimizerConfig, torch_params: list[Any], keras_variables: list[Any]) -> None:
        import keras
        import torch

        self.cfg = cfg
        if cfg.name == "sgd":
            self.torch = torch.optim.SGD(torch_params, lr=cfg.lr, momentum=cfg.momentum, dampening=0.0,
                                         nesterov=False, weight_decay=0.0)
            self.keras = keras.optimizers.SGD(learning_rate=cfg.lr, momentum=cfg.momentum, nesterov=False)
        elif cfg.name == "adam":
            eps_t = cfg.epsilon if cfg.epsilon is not None else DEFAULT_EPSILON["torch"]
            self.torch = torch.optim.Adam(torch_params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=eps_t,
                                          weight_decay=0.0, amsgrad=False)
            kwargs = {} if cfg.epsilon is None else {"epsilon": cfg.epsilon}
            self.keras = keras.optimizers.Adam(learning_rate=cfg.lr, beta_1=cfg.beta1, beta_2=cfg.beta2,
                                               amsgrad=False, **kwargs)
        else:
            raise UsageError(f"unknown optimizer {cfg.name!r}; expected one of {', '.join(OPTIMIZERS)}")
        self.variables = keras_variables
        self.keras_epsilons: list[float] = []

    def step(self, t: int, keras_grads: list[Any]) -> None:
        """Apply step ``t`` (1-based) in both frameworks (``keras_grads`` in ``variables`` order)."""
        self.torch.step()
        if self.cfg.name == "adam" and self.cfg.epsilon is not None:
            self.keras.epsilon = self.cfg.epsilon * math.sqrt(1.0 - self.cfg.beta2 ** t)
        if self.cfg.name == "adam":
            self.keras_epsilons.append(float(self.keras.epsilon))
        self.keras.apply_gradients(zip(keras_grads, self.variables, strict=True))


# ----------------------------------------------------------------------------- results


@dataclass
class LossStep:
    step: int
    torch: float
    tf: float
    abs_diff: float
    atol: float
    passed: bool


@dataclass
class TrainingRun:
    optimizer: dict[str, Any]
    losses: list[LossStep]
    parameters: list[ParamRow]
    tolerance: dict[str, Any]

    @property
    def passed(self) -> bool:
        return all(s.passed for s in self.losses) and all(r.passed for r in self.parameters)

    @property
    def first_divergent_parameter(self) -> str | None:
        return next((r.name for r in self.parameters if not r.passed), None)

    @property
    def first_divergent_step(self) -> int | None:
        return next((s.step for s in self.losses if not s.passed), None)

    @property
    def first_divergence(self) -> str | None:
        """Where first: a parameter or running statistic (forward order); else the first diverging loss."""
        name = self.first_divergent_parameter
        if name is not None:
            return name
        step = self.first_divergent_step
        return f"loss at step {step}" if step is not None else None

    def to_dict(self) -> dict[str, Any]:
        first = next((r for r in self.parameters if not r.passed), None)
        return {"passed": self.passed, "optimizer": self.optimizer, "tolerance": self.tolerance,
                "first_divergence": self.first_divergence, "first_divergent_parameter": self.first_divergent_parameter,
                "first_divergent_step": self.first_divergent_step,
                "first_divergence_detail": first.to_dict() if first else None,
                "losses": [asdict(s) for s in self.losses],
                "parameters": [r.to_dict() for r in self.parameters if not r.statistic],
                "statistics": [r.to_dict() for r in self.parameters if r.statistic]}


@dataclass
class TrainingReport:
    steps: int
    loss: str
    batch: dict[str, Any]
    runs: dict[str, TrainingRun]
    batchnorm: list[dict[str, Any]] = field(default_factory=list)
    alignments: list[str] = field(default_factory=list)
    dropout: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.runs.values())

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "steps": self.steps, "loss": self.loss, "batch": self.batch,
                "dropout": {"disabled": self.dropout,
                            "reason": "each framework draws dropout masks from its own random stream; no seed "
                                      "makes the two streams equal, so dropout is off in both twins"},
                "batchnorm": self.batchnorm, "alignments": self.alignments, "notes": self.notes,
                "runs": {k: r.to_dict() for k, r in self.runs.items()}}

    def format(self) -> str:
        lines = []
        for name, run in self.runs.items():
            worst = max(run.losses, key=lambda s: s.abs_diff)
            lines.append(f"training {name} ({self.steps} steps, batch {self.batch['used']}): loss "
                         f"{run.losses[0].torch:.6g} -> {run.losses[-1].torch:.6g}, worst loss gap {worst.abs_diff:.2e} "
                         f"at step {worst.step}; {'PASSED' if run.passed else 'FAILED'}")
            if not run.passed:
                lines += _table(run.parameters)
                lines.append(f"  first divergence: {run.first_divergence}")
        for line in self.batchnorm:
            if not line["converted"]:
                lines.append(f"  BatchNorm momentum not converted: {line['message']}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- alignment helpers


def batchnorm_momenta(slots: Sequence[Slot]) -> list[dict[str, Any]]:
    """Each BatchNorm pair's momentum, converted explicitly: Keras momentum = 1 - torch momentum."""
    out = []
    seen = set()
    for slot in slots:
        if slot.kind != "batchnorm" or slot.layer in seen:
            continue
        seen.add(slot.layer)
        tm, km = slot.torch_layer.obj, slot.keras_layer.obj
        m = getattr(tm, "momentum", None)
        k = float(getattr(km, "momentum", float("nan")))
        expected = None if m is None else 1.0 - float(m)
        ok = expected is not None and abs(k - expected) <= 1e-6 * max(1.0, abs(expected))
        msg = (f"{slot.layer}: torch momentum {m} (new = (1 - m) old + m batch) needs Keras momentum "
               f"{expected if expected is None else round(expected, 9)}, the Keras twin has {k}")
        out.append({"layer": slot.layer, "torch_momentum": m, "keras_momentum": k, "expected_keras_momentum": expected,
                    "converted": ok, "message": msg})
    return out


@contextmanager
def _single_lstm_bias(torch_model: Any) -> Iterator[list[str]]:
    """Fold each torch LSTM's b_hh into b_ih and freeze it, as Keras has one bias per gate."""
    import torch
    from torch import nn

    changed: list[tuple[Any, bool]] = []
    names: list[str] = []
    with torch.no_grad():
        for name, m in torch_model.named_modules():
            if isinstance(m, nn.LSTM) and m.bias:
                for pname, p in m.named_parameters(recurse=False):
                    if pname.startswith("bias_hh"):
                        getattr(m, pname.replace("bias_hh", "bias_ih")).add_(p)
                        p.zero_()
                        changed.append((p, p.requires_grad))
                        p.requires_grad_(False)
                names.append(name)
    try:
        yield names
    finally:
        for p, flag in changed:
            p.requires_grad_(flag)


def _variance_recorder(torch_model: Any) -> tuple[dict[str, list[tuple[np.ndarray, int]]], list[Any]]:
    """Per torch BatchNorm (by module name): each training forward's biased batch variance and
    values per channel; and the hook handles to remove."""
    from torch import nn

    from converters.torch_hooks import attach

    seen: dict[str, list[tuple[np.ndarray, int]]] = {}

    def hook(name: str) -> Callable[..., None]:
        def record(mod: Any, args: Any) -> None:
            if mod.training:
                x = args[0].detach().double()
                var = x.var(dim=[0, *range(2, x.ndim)], unbiased=False)
                seen.setdefault(name, []).append((var.numpy(), int(x.numel() // x.shape[1])))
        return record

    norms = [(n, m) for n, m in torch_model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return seen, attach(norms, hook, pre=True)


def unbiased_correction(history: Sequence[tuple[np.ndarray, int]], momentum: float) -> np.ndarray:
    """What torch's running variance holds beyond a biased-variance tracker after these steps."""
    n_steps = len(history)
    total = np.zeros_like(history[0][0]) if history else np.zeros(0)
    for t, (var, n) in enumerate(history):
        if n > 1:
            total = total + momentum * (1.0 - momentum) ** (n_steps - 1 - t) * var / (n - 1)
    return total


# ----------------------------------------------------------------------------- the entry point


def train_parity(spec: Any, torch_model: Any, keras_model: Any, *, steps: int = 5,
                 optimizers: Sequence[OptimizerConfig | str] = OPTIMIZERS, batch: int = 2, seed: int = 0,
                 loss: str = "mse", strict: bool = False, reference: str = "torch",
                 min_values: int = MIN_VALUES_PER_CHANNEL) -> TrainingReport:
    """``steps`` optimizer steps per optimizer in both twins; see the module docstring."""
    if steps < 1:
        raise UsageError(f"--train-steps must be at least 1, got {steps}")
    configs = [default_optimizer(o) if isinstance(o, str) else o for o in optimizers]
    if not configs:
        raise UsageError("no optimizer to train with; choose sgd, adam or both")
    choice: BatchChoice = choose_batch(spec, torch_model, batch, seed, min_values)
    used = choice.used
    batches = [spec.example_inputs(used, seed + 1000 + t) for t in range(steps)]
    losses = [make_loss(spec, loss, used, seed, step=t) for t in range(steps)]
    first_in = list(spec.inputs_for("torch", batches[0]).values())
    slots = parameter_slots(torch_model, keras_model, first_in,
                            channels_first_1d=any(s.layout == "NCL" for s in spec.inputs))
    momenta = batchnorm_momenta(slots)
    frozen = noise_gradient_slots(spec, torch_model, keras_model, slots, batches[0], losses[0])
    report = TrainingReport(steps=steps, loss=loss, batch=choice.to_dict(), runs={}, batchnorm=momenta)
    if frozen:
        report.alignments.append(
            f"frozen in both twins: {', '.join(s.name for s in frozen)}: their gradients are zero in exact "
            f"arithmetic (under {NOISE_GRADIENT:g} of their layer's largest gradient in both frameworks: a bias "
            "just before a training-mode BatchNorm, an attention key bias), i.e. pure rounding noise, which Adam "
            "would normalise into full-size steps that no two frameworks take alike")
    if choice.reason:
        report.notes.append(f"batch {used} instead of {batch}: {choice.reason}")
    for cfg in configs:
        with training_mode(torch_model, keras_model) as switched, _single_lstm_bias(torch_model) as lstms:
            report.dropout = switched
            if lstms:
                msg = (f"torch LSTM {', '.join(lstms)}: b_hh folded into b_ih and frozen for training, as Keras "
                       "has one bias per gate (two torch biases would move their sum twice as fast)")
                if msg not in report.alignments:
                    report.alignments.append(msg)
            report.runs[cfg.name] = _run(spec, torch_model, keras_model, cfg, batches, losses, slots, strict,
                                         reference, frozen)
    report.alignments.insert(0, "SGD: torch v = mu v + g, p -= lr v and Keras v = mu v - lr g, p += v: equal "
                                "for a constant learning rate (no dampening, Nesterov or weight decay)")
    report.alignments.insert(1, "Adam epsilon: Keras's epsilon set to eps * sqrt(1 - beta2^t) before step t, "
                                "so Keras's sqrt(v) + eps' equals torch's sqrt(v_hat) + eps after bias correction")
    report.alignments.append("running variance: torch's unbiased (n / (n - 1)) batch variance corrected to "
                             "Keras's biased one before comparing, from each step's recorded batch variance")
    return report


def _dense(grad: Any) -> Any:
    """TF hands embedding gradients over as IndexedSlices, which Keras applies to the looked-up rows
    only (a "lazy" Adam: the other rows' moments neither decay nor move them); torch's Adam is dense."""
    import tensorflow as tf

    return tf.convert_to_tensor(grad) if isinstance(grad, tf.IndexedSlices) else grad


NOISE_GRADIENT = 1e-5  # a slot whose max |g| is under this fraction of its layer's largest gradient


def noise_gradient_slots(spec: Any, torch_model: Any, keras_model: Any, slots: Sequence[Slot],
                         inputs: dict[str, np.ndarray], objective: Any) -> list[Slot]:
    """Trainable slots whose gradient is rounding noise in both frameworks (zero in exact arithmetic)."""
    with training_mode(torch_model, keras_model), _single_lstm_bias(torch_model):
        _, tg = torch_step(torch_model, list(spec.inputs_for("torch", inputs).values()), objective)
        _, kg, _ = keras_step(keras_model, list(spec.inputs_for("tf", inputs).values()), objective)
    trainable = [s for s in slots if s.trainable]
    t_vals = [(s, s.torch_read([tg[id(h)] for h in s.torch], "grad")) for s in trainable]
    k_vals = [(s, s.keras_read([kg[id(h)] for h in s.keras], "grad")) for s in trainable]
    t_scale, k_scale = layer_scales(t_vals), layer_scales(k_vals)
    return [s for (s, t), (_, k) in zip(t_vals, k_vals, strict=True)
            if t.size and t_scale[s.layer] > 0 and float(np.max(np.abs(t))) <= NOISE_GRADIENT * t_scale[s.layer]
            and float(np.max(np.abs(k))) <= NOISE_GRADIENT * k_scale[s.layer]]


ADAM_NOISE_SAFETY = 10.0  # x the gradients' rounding noise measured at the first step


def _run(spec: Any, torch_model: Any, keras_model: Any, cfg: OptimizerConfig, batches: Sequence[dict[str, np.ndarray]],
         losses: Sequence[Any], slots: Sequence[Slot], strict: bool, reference: str,
         frozen: Sequence[Slot] = ()) -> TrainingRun:
    base = spec.tolerance
    grad_factor = 1.0 if strict else math.sqrt(2.0)
    n = len(batches)
    growth = 1.0 if strict else float(n)

    def torch_values() -> dict[int, np.ndarray]:
        return {id(p): p.detach().numpy().copy() for p in [*torch_model.parameters(), *torch_model.buffers()]}

    def keras_values() -> dict[int, np.ndarray]:
        return {id(v): np.asarray(v.numpy()).copy() for v in keras_model.weights}

    start_t = torch_values()
    still_t = {id(h) for s in frozen for h in s.torch}
    still_k = {id(h) for s in frozen for h in s.keras}
    params = [p for p in torch_model.parameters() if p.requires_grad and id(p) not in still_t]
    variables = list(keras_model.trainable_variables)
    moving = [i for i, v in enumerate(variables) if id(v) not in still_k]
    opt = _Optimizers(cfg, params, [variables[i] for i in moving])
    live = [s for s in slots if s.trainable and s not in frozen]
    layer_of = {id(h): s.layer for s in live for h in s.torch}
    allowance = {id(p): np.zeros(tuple(p.shape)) for p in params}  # Adam: see _adam_allowance
    noise = 0.0
    history, hooks = _variance_recorder(torch_model)
    steps: list[LossStep] = []
    try:
        for t, (inputs, objective) in enumerate(zip(batches, losses, strict=True), start=1):
            t_loss, t_grads = torch_step(torch_model, list(spec.inputs_for("torch", inputs).values()), objective)
            k_loss, k_grads, raw = keras_step(keras_model, list(spec.inputs_for("tf", inputs).values()), objective)
            t_can = [(s, s.torch_read([t_grads[id(h)] for h in s.torch], "grad")) for s in live]
            scales = layer_scales(t_can)
            if t == 1:  # same parameters on both sides: the gradients differ by rounding alone
                noise = max((float(np.max(np.abs(g - s.keras_read([k_grads[id(h)] for h in s.keras], "grad"))))
                             / scales[s.layer] for s, g in t_can if g.size and scales[s.layer] > 0), default=0.0)
            opt.step(t, [_dense(raw[i]) for i in moving])
            if cfg.name == "adam" and not strict:
                _adam_allowance(opt.torch, cfg, t, allowance, layer_of, scales, ADAM_NOISE_SAFETY * noise)
            tol = base.atol * grad_factor * (1.0 if strict else float(t)) * max(abs(t_loss), abs(k_loss))
            diff = abs(t_loss - k_loss)
            steps.append(LossStep(t - 1, t_loss, k_loss, diff, tol, diff <= tol))
    finally:
        for h in hooks:
            h.remove()
    end_t, end_k = torch_values(), keras_values()
    atol_rel = base.atol * grad_factor * growth
    rtol = base.rtol * grad_factor * growth
    finals = []
    for slot in slots:
        tv = slot.torch_read([end_t[id(h)] for h in slot.torch], "value")
        kv = slot.keras_read([end_k[id(h)] for h in slot.keras], "value")
        t0 = slot.torch_read([start_t[id(h)] for h in slot.torch], "value")
        if slot.kind == "batchnorm" and slot.role == "var":
            owner, name = slot.torch_layer.obj, slot.torch_layer.name
            if owner.momentum is not None and history.get(name):
                tv = tv - unbiased_correction(history[name], float(owner.momentum)).astype(tv.dtype)
        finals.append((slot, tv, kv, t0))
    deltas = layer_scales([(s, tv - t0) for s, tv, _, t0 in finals if s.trainable])
    rows = []
    for slot, tv, kv, _t0 in finals:
        extra = None
        if slot.trainable:
            floor = 4.0 * n * F32_EPS * float(np.max(np.abs(tv))) if tv.size else 0.0
            scale = deltas[slot.layer] + floor / atol_rel
            if cfg.name == "adam" and not strict and slot not in frozen:
                extra = np.abs(slot.torch_read([allowance.get(id(h), np.zeros(tuple(h.shape))) for h in slot.torch],
                                               "value"))
        else:
            scale = None  # running statistics: their own scale
        row = compare_slot(slot, tv, kv, atol_rel, rtol if not slot.trainable else 0.0, reference, scale, extra)
        if slot.kind == "batchnorm" and slot.role == "var":
            row.note = "torch's unbiased running variance corrected to the biased one Keras tracks"
        if slot in frozen:
            row.note = "frozen in both twins (its gradient is rounding noise)"
        rows.append(row)
    tolerance = {
        "parameters": {"atol": atol_rel, "relative_to": "the largest |p_N - p_0| of the parameter's layer, plus a "
                       f"float32 floor of 4 * {n} * eps * max|p|", "rtol": 0.0},
        "statistics": {"atol": atol_rel, "rtol": rtol, "relative_to": "the statistic's max |value|"},
        "losses": {"atol": f"{base.atol * grad_factor:.3g} x step x |loss|"},
        "strict": strict,
        "reason": ("taken as given (strict)" if strict else
                   f"sqrt(2) x the spec's tolerance per step (a gradient's rounding, see parity.diagnostics.grads), growing "
                   f"linearly with the steps as earlier errors feed back through the parameters; spec: {base.reason}"),
    }
    if cfg.name == "adam" and not strict:
        tolerance["parameters"]["adam_allowance"] = (
            f"plus, per element, sum_t lr * {ADAM_NOISE_SAFETY:g} * rho * S_t / (sqrt(v_hat_t) + eps): Adam divides "
            "each gradient element by its own running RMS, so an element whose gradient is near its layer's "
            "rounding noise (rho x the layer's largest gradient S_t) gets an update error that is no longer small "
            f"against the update; rho = {noise:.3g} is the gradients' relative gap measured at the first step, "
            "where both twins hold the same parameters")
    run = TrainingRun(optimizer=cfg.describe(), losses=steps, parameters=rows, tolerance=tolerance)
    if opt.keras_epsilons:
        run.optimizer["keras_epsilon_per_step"] = opt.keras_epsilons
    return run


def _adam_allowance(optimizer: Any, cfg: OptimizerConfig, t: int, allowance: dict[int, np.ndarray],
                    layer_of: dict[int, str], scales: dict[str, float], noise: float) -> None:
    """Accumulate, per element, how far step t's update may move for a gradient error of ``noise`` x the
    layer's largest gradient: lr * noise * S / (sqrt(v_hat) + eps), with v from torch's Adam state."""
    eps = cfg.epsilon if cfg.epsilon is not None else DEFAULT_EPSILON["torch"]
    bc2 = 1.0 - cfg.beta2 ** t
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p)
            if not state or id(p) not in layer_of:
                continue
            denom = np.sqrt(state["exp_avg_sq"].detach().numpy().astype(np.float64) / bc2) + eps
            allowance[id(p)] += cfg.lr * noise * scales.get(layer_of[id(p)], 0.0) / denom
