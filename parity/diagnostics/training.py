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
- Weight decay (the optimizer's own, not a regulariser): none by default. A user pair's own
  optimizers (``parity.diagnostics.user_optimizers``) set each side from its own optimizer, with
  its framework's semantics (torch SGD/Adam: ``wd * p`` added to the gradient; torch AdamW and
  Keras: ``p -= lr * wd * p`` before the update), so that a difference between them diverges at
  the parameters it decays differently.
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
  Adam would normalise into full-size steps in directions no two frameworks share. So are
  single elements of a live parameter whose gradient is zero in exact arithmetic (the torch
  twin's first step in float64) and noise in float32 (``parity.diagnostics.noise_elements``):
  resnet50's bn1.beta channels 1, 2, 4 and 6, whose opposite first steps otherwise moved
  other layers' later gradients 85-97x beyond the rounding the Adam allowance is built for.

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
Under Adam each element also gets an allowance for the gradients' float32 rounding, which
Adam does not keep small: it divides every gradient element by its own running RMS, so an
element whose gradient is small against its layer's largest gradient takes an update whose
rounding error is no longer small against the update itself. The allowance is derived from
the reference twin alone (``parity.diagnostics.optimizers.AdamAllowance``): a gradient error
of at most delta_s at step s moves the parameter after N steps by at most
``sum_s |dp_N / dg_s| delta_s`` to first order, Adam's update differentiated along the
reference's own gradients (through m_hat and sqrt(v_hat) + eps, where errors of a gradient
that keeps its sign largely cancel), plus ``2 lr (delta / D) min(1, delta / D)`` per step for
gradients near their rounding, whose sign may flip (D = sqrt(v_hat) + eps). ``delta_s = 4
rho_L S_s``: rho_L is the torch twin's own float32 rounding of layer L's gradients (the first
step run once more in float64 on a copy; max |g_float32 - g_float64| over the layer, relative
to its largest gradient S), and 4 covers the other twin's rounding: across the zoo the twins'
gradient gap at the first step is at most 3.3 x the torch twin's own rounding, per layer
(resnet18 bn1). Nothing in it compares the twins, so a bug cannot widen its own tolerance.
The earlier allowance, 10 x the twins' measured gradient gap (the largest over all layers)
x S_t / (sqrt(v_hat_t) + eps), did: resnet50 ``bn1.beta`` passed at 2.4e-1 of its update, and
an Adam epsilon left at each framework's default passed on cnn. That slip (Keras adds 1e-7
to sqrt(v) before the bias correction, about 3.2e-6 after it at the first step, where torch
adds 1e-8) moves an element's update by about 3.2e-6 / |g| of itself. Measured over the zoo
(5 steps, default hyperparameters): without a planted bug every parameter stays within 0.14
of what its tolerance allows (resnet50; SGD 0.03); with the slip, the worst element exceeds
it 2.4x (resnet18) to 1000x (autoencoder), 21x on cnn. Running statistics are judged against
their own scale. ``strict`` takes the spec's tolerance as given, without the sqrt(2),
the growth and the Adam allowance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from parity.diagnostics.alignment import (
    NOISE_GRADIENT,
    FirstStep,
    batchnorm_momenta,
    densify,
    first_step,
    single_lstm_bias,
    unbiased_correction,
    variance_recorder,
)
from parity.diagnostics.batch import MIN_VALUES_PER_CHANNEL, BatchChoice, choose_batch
from parity.diagnostics.device import Placement, as_placement, keras_placed, torch_placed
from parity.diagnostics.frozen import FROZEN_BN_NOTE, frozen_batchnorms, frozen_parts, mark_frozen
from parity.diagnostics.noise_elements import native_masks
from parity.diagnostics.optimizers import (
    DEFAULT_EPSILON,
    GAP_OVER_ROUNDING,
    OPTIMIZERS,
    AdamAllowance,
    OptimizerConfig,
    Optimizers,
    default_optimizer,
)
from parity.diagnostics.rows import compare_slot, layer_scales
from parity.diagnostics.slots import Slot, parameter_slots, read_slots
from parity.diagnostics.steps import keras_step, make_loss, torch_step, training_mode
from parity.diagnostics.training_report import LossStep, TrainingReport, TrainingRun
from parity.errors import UsageError

__all__ = ["DEFAULT_EPSILON", "OPTIMIZERS", "AdamAllowance", "FirstStep", "LossStep", "OptimizerConfig",
           "TrainingReport", "TrainingRun", "batchnorm_momenta", "default_optimizer", "first_step", "train_parity",
           "unbiased_correction"]

F32_EPS = float(np.finfo(np.float32).eps)


def train_parity(spec: Any, torch_model: Any, keras_model: Any, *, steps: int = 5,
                 optimizers: Sequence[OptimizerConfig | str] = OPTIMIZERS, batch: int = 2, seed: int = 0,
                 loss: str = "mse", strict: bool = False, reference: str = "torch",
                 min_values: int = MIN_VALUES_PER_CHANNEL, device: str | Placement = "cpu") -> TrainingReport:
    """``steps`` optimizer steps per optimizer in both twins; see the module docstring.

    ``device``: where each twin trains ('cpu', 'cuda', or a ``Placement`` per framework); the
    torch twin is trained on a copy there when it is elsewhere, so the caller's stays put.
    """
    if steps < 1:
        raise UsageError(f"--train-steps must be at least 1, got {steps}")
    configs = [default_optimizer(o) if isinstance(o, str) else o for o in optimizers]
    if not configs:
        raise UsageError("no optimizer to train with; choose sgd, adam or both")
    place = as_placement(device)
    with torch_placed(torch_model, place.torch) as there, keras_placed(place.tf):
        return _train(spec, there, keras_model, steps, configs, batch, seed, loss, strict, reference, min_values)


def _train(spec: Any, torch_model: Any, keras_model: Any, steps: int, configs: Sequence[OptimizerConfig], batch: int,
           seed: int, loss: str, strict: bool, reference: str, min_values: int) -> TrainingReport:
    """``train_parity`` with the twins in place."""
    choice: BatchChoice = choose_batch(spec, torch_model, batch, seed, min_values)
    used = choice.used
    batches = [spec.example_inputs(used, seed + 1000 + t) for t in range(steps)]
    losses = [make_loss(spec, loss, used, seed, step=t) for t in range(steps)]
    first_in = list(spec.inputs_for("torch", batches[0]).values())
    slots = parameter_slots(torch_model, keras_model, first_in,
                            channels_first_1d=any(s.layout == "NCL" for s in spec.inputs))
    momenta = batchnorm_momenta(slots)
    first = first_step(spec, torch_model, keras_model, slots, batches[0], losses[0])
    frozen = first.frozen
    report = TrainingReport(steps=steps, loss=loss, batch=choice.to_dict(), runs={}, batchnorm=momenta)
    if frozen:
        report.alignments.append(
            f"frozen in both twins: {', '.join(s.name for s in frozen)}: their gradients are zero in exact "
            f"arithmetic (under {NOISE_GRADIENT:g} of their layer's largest gradient in both frameworks: a bias "
            "just before a training-mode BatchNorm, an attention key bias), i.e. pure rounding noise, which Adam "
            "would normalise into full-size steps that no two frameworks take alike")
    held = _held_elements(slots, first)
    if held:
        report.alignments.append(
            "frozen in both twins, element by element: " + ", ".join(f"{s.name}{_where(m)}" for s, m, _ in held)
            + f": their gradients are zero in exact arithmetic (under 1e-9 of their layer's largest in float64, under "
            f"{NOISE_GRADIENT:g} in both frameworks), i.e. rounding noise, which Adam would turn into full-size steps "
            "in opposite directions (see parity.diagnostics.noise_elements)")
    if choice.reason:
        report.notes.append(f"batch {used} instead of {batch}: {choice.reason}")
    if frozen_batchnorms(torch_model):
        report.alignments.append(f"{FROZEN_BN_NOTE}: {', '.join(frozen_batchnorms(torch_model))}")
    for cfg in configs:
        with training_mode(torch_model, keras_model) as switched, single_lstm_bias(torch_model) as lstms:
            report.dropout = switched
            if lstms:
                msg = (f"torch LSTM {', '.join(lstms)}: b_hh folded into b_ih and frozen for training, as Keras "
                       "has one bias per gate (two torch biases would move their sum twice as fast)")
                if msg not in report.alignments:
                    report.alignments.append(msg)
            report.runs[cfg.run_name] = _run(spec, torch_model, keras_model, cfg, batches, losses, slots, strict,
                                         reference, first)
    report.alignments.insert(0, "SGD: torch v = mu v + g, p -= lr v and Keras v = mu v - lr g, p += v: equal "
                                "for a constant learning rate (no dampening, Nesterov or weight decay)")
    report.alignments.insert(1, "Adam epsilon: Keras's epsilon set to eps * sqrt(1 - beta2^t) before step t, "
                                "so Keras's sqrt(v) + eps' equals torch's sqrt(v_hat) + eps after bias correction")
    report.alignments.append("running variance: torch's unbiased (n / (n - 1)) batch variance corrected to "
                             "Keras's biased one before comparing, from each step's recorded batch variance")
    return report


def _run(spec: Any, torch_model: Any, keras_model: Any, cfg: OptimizerConfig, batches: Sequence[dict[str, np.ndarray]],
         losses: Sequence[Any], slots: Sequence[Slot], strict: bool, reference: str,
         first: FirstStep | None = None) -> TrainingRun:
    """One optimizer's ``len(batches)`` steps in both twins, then every slot compared."""
    first = first or FirstStep([])
    frozen = first.frozen
    base = spec.tolerance
    grad_factor = 1.0 if strict else math.sqrt(2.0)
    n = len(batches)
    growth = 1.0 if strict else float(n)

    def torch_values() -> dict[int, np.ndarray]:
        return {id(p): p.detach().cpu().numpy().copy() for p in [*torch_model.parameters(), *torch_model.buffers()]}

    def keras_values() -> dict[int, np.ndarray]:
        return {id(v): np.asarray(v.numpy()).copy() for v in keras_model.weights}

    start_t = torch_values()
    still_k = {id(h) for s in frozen for h in s.keras}
    still_t, masks = frozen_parts(frozen, [s for s in slots if s.trainable and s not in frozen])
    params = [p for p in torch_model.parameters() if p.requires_grad and id(p) not in still_t]
    variables = list(keras_model.trainable_variables)
    moving = [i for i, v in enumerate(variables) if id(v) not in still_k]
    opt = Optimizers(cfg, params, [variables[i] for i in moving], {id(p): n for n, p in torch_model.named_parameters()})
    live = [s for s in slots if s.trainable and s not in frozen]
    adam = None
    if cfg.name == "adam" and not strict:  # see AdamAllowance
        adam = AdamAllowance(cfg, [s.layer for s in live], first.rounding, reference)
    history, hooks = variance_recorder(torch_model)
    import torch

    held = _held_elements(live, first)
    keras_keep: dict[int, np.ndarray] = {}
    for _slot, _mask, (t_keep, k_keep) in held:
        for p in params:
            if id(p) in t_keep:
                base_mask = masks.get(id(p))
                extra = torch.from_numpy(t_keep[id(p)]).to(p.dtype)
                masks[id(p)] = extra if base_mask is None else base_mask * extra
        for key, keep in k_keep.items():  # a variable behind two slots: both slots' elements held
            keras_keep[key] = keep * keras_keep.get(key, 1.0)
    hooks += [p.register_hook(lambda g, keep=keep: g * keep.to(g.device))  # type: ignore[misc]
              for p in torch_model.parameters() if (keep := masks.get(id(p))) is not None]
    steps: list[LossStep] = []
    try:
        for t, (inputs, objective) in enumerate(zip(batches, losses, strict=True), start=1):
            t_loss, t_grads = torch_step(torch_model, list(spec.inputs_for("torch", inputs).values()), objective)
            k_loss, k_grads, raw = keras_step(keras_model, list(spec.inputs_for("tf", inputs).values()), objective)
            opt.step(t, [densify(raw[i]) * keras_keep[id(variables[i])] if id(variables[i]) in keras_keep
                         else densify(raw[i]) for i in moving])
            if adam is not None:  # the reference's own gradients, never the other twin's
                ref = read_slots(live, reference, t_grads if reference == "torch" else k_grads, "grad")
                adam.step(ref, layer_scales(list(zip(live, ref, strict=True))))
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
    ends_t, ends_k = read_slots(slots, "torch", end_t), read_slots(slots, "tf", end_k)
    starts = read_slots(slots, "torch", start_t)
    allowances = dict(zip(map(id, live), adam.totals(), strict=True)) if adam is not None else {}
    for slot, mask, _ in held:  # held equal in both twins: no allowance
        if id(slot) in allowances:
            allowances[id(slot)] = np.where(mask, 0.0, allowances[id(slot)])
    for slot, tv, kv, t0 in zip(slots, ends_t, ends_k, starts, strict=True):
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
            extra = allowances.get(id(slot))
        else:
            scale = None  # running statistics: their own scale
        row = compare_slot(slot, tv, kv, atol_rel, rtol if not slot.trainable else 0.0, reference, scale, extra)
        if slot.kind == "batchnorm" and slot.role == "var":
            row.note = "torch's unbiased running variance corrected to the biased one Keras tracks"
        if slot in frozen:
            row.note = "frozen in both twins (its gradient is rounding noise)"
        rows.append(row)
    mark_frozen(rows, [s for s, *_ in finals], keras_model)
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
    if adam is not None:
        worst = max(first.rounding.items(), key=lambda kv: kv[1], default=("", 0.0))
        tolerance["parameters"]["adam_allowance"] = (
            "plus, per element, how far Adam's update moves for gradient errors of at most "
            f"delta_s = {GAP_OVER_ROUNDING:g} x rho_L x S_s at each step, all from the {reference} twin alone: "
            "sum_s |dp_N/dg_s| delta_s (Adam differentiated along the reference's own gradients), plus "
            "2 lr (delta/D) min(1, delta/D) per step for gradients near their rounding (D = sqrt(v_hat) + eps); "
            "rho_L is the torch twin's own float32 rounding of layer L's gradients (against the same first step "
            f"in float64), S_s the layer's largest gradient; the largest rho_L is {worst[1]:.3g} ({worst[0]})")
        tolerance["parameters"]["gradient_rounding"] = dict(first.rounding)
    run = TrainingRun(optimizer=cfg.describe(), losses=steps, parameters=rows, tolerance=tolerance)
    if opt.keras_epsilons:
        run.optimizer["keras_epsilon_per_step"] = opt.keras_epsilons
    return run


def _held_elements(slots: Sequence[Slot], first: FirstStep) -> list[tuple[Slot, np.ndarray, tuple[dict, dict]]]:
    """The live slots with elements frozen one by one (``FirstStep.noise``): slot, canonical mask, and the
    keep masks of its torch tensors and Keras variables (see ``parity.diagnostics.noise_elements``)."""
    out = []
    for slot in slots:
        mask = first.noise.get(slot.name)
        if mask is not None and (keep := native_masks(slot, mask)) is not None:
            out.append((slot, mask, keep))
    return out


def _where(mask: np.ndarray) -> str:
    """The frozen elements of a canonical mask: their indices (the first few) and how many of how many."""
    idx = [tuple(int(i) for i in ix) for ix in np.argwhere(mask)]
    shown = ", ".join(str(i[0]) if len(i) == 1 else str(list(i)) for i in idx[:6]) + (", ..." if len(idx) > 6 else "")
    return f"[{shown}] ({len(idx)} of {mask.size})"
