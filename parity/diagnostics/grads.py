"""Gradient parity: the same loss on the same batch in both twins, every parameter's gradient compared.

Both twins run in training mode (BatchNorm normalises with the batch statistics, as it
does when one fine-tunes) with dropout switched off: dropout draws from each
framework's own random stream, and no seed makes the two streams equal. The loss is
the mean squared error against seeded targets (``mse``, any output) or the
cross-entropy on seeded labels (``xent``, one (batch, classes) logits output), in float32.

Each parameter is compared in the canonical (ONNX) layout the port uses, read through
each layer kind's ``read`` in ``converters.targets`` (the inverse of the ``write`` the port
uses; gradients are linear in the parameters, so the same transform applies): a torch ``Linear.weight`` (out, in) and a Keras ``Dense.kernel``
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

Training-mode BatchNorm over very few values per channel amplifies rounding by 100x and
more; ``parity.diagnostics.batch.choose_batch`` raises the batch until it is well
conditioned, and the report says so.

The parts live beside this module and are re-exported here: pairing in ``slots``, the
loss and each framework's step in ``steps``, the batch in ``batch``, rows in ``rows``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from parity.diagnostics.batch import MIN_VALUES_PER_CHANNEL, BatchChoice, batchnorm_stats, choose_batch
from parity.diagnostics.device import Placement, as_placement, keras_placed, torch_placed
from parity.diagnostics.frozen import FROZEN_BN_NOTE, frozen_batchnorms, mark_frozen
from parity.diagnostics.rows import ParamRow, compare_slot, layer_scales, param_table
from parity.diagnostics.slots import Slot, pair_layers, parameter_slots, read_slots
from parity.diagnostics.steps import (
    LOSSES,
    TARGET_SEED_OFFSET,
    Loss,
    keras_step,
    make_loss,
    torch_step,
    training_mode,
)

__all__ = ["LOSSES", "MIN_VALUES_PER_CHANNEL", "TARGET_SEED_OFFSET", "BatchChoice", "GradReport", "Loss", "ParamRow",
           "Slot", "batchnorm_stats", "choose_batch", "compare_slot", "grad_tolerance", "gradient_parity",
           "keras_step", "layer_scales", "make_loss", "pair_layers", "param_table", "parameter_slots", "read_slots",
           "torch_step", "training_mode"]


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
        """The first parameter frozen on one side only (the cause), else the first failing row."""
        cause = next((r.name for r in self.rows if r.cause), None)
        return cause or next((r.name for r in self.rows if not r.passed), None)

    def to_dict(self) -> dict[str, Any]:
        first = next((r for r in self.rows if r.name == self.first_divergence), None)
        return {"passed": self.passed, "loss": self.loss, "mode": self.mode, "batch": self.batch,
                "tolerance": self.tolerance,
                "first_divergence": self.first_divergence, "first_divergence_detail": first.to_dict() if first else None,
                "parameters": [r.to_dict() for r in self.rows], "notes": self.notes}

    def format(self) -> str:
        lines = [f"gradients ({self.loss['kind']}: torch {self.loss['torch']:.6g}, tf {self.loss['tf']:.6g}; "
                 f"{len(self.rows)} parameters)"]
        lines += param_table(self.rows)
        lines.append(f"first divergent parameter: {self.first_divergence}" if self.first_divergence
                     else "every gradient within tolerance")
        return "\n".join(lines)


def grad_tolerance(tolerance: Any, strict: bool = False) -> tuple[float, float, str]:
    """(atol relative to each gradient's scale, rtol, reason) from the spec's output tolerance."""
    factor = 1.0 if strict else math.sqrt(2.0)
    why = ("the spec's output tolerance, taken as given (strict)" if strict else
           "sqrt(2) x the spec's output tolerance: a gradient accumulates float32 rounding forward through the "
           "model and back again (about 2D layers against the output's D), relative to each gradient's max |g|")
    return tolerance.atol * factor, tolerance.rtol * factor, f"{why}; spec: {tolerance.reason}"


def gradient_parity(spec: Any, torch_model: Any, keras_model: Any, inputs: Mapping[str, np.ndarray], *,
                    loss: str = "mse", seed: int = 0, strict: bool = False, reference: str = "torch",
                    min_values: int = MIN_VALUES_PER_CHANNEL, device: str | Placement = "cpu") -> GradReport:
    """Gradients of the same loss on the same batch in both twins (``inputs`` in torch layout; a
    larger seeded batch from ``spec`` when BatchNorm needs it, see ``choose_batch``).

    ``device``: where each twin runs ('cpu', 'cuda', or a ``Placement`` per framework); the
    torch twin runs as a copy there when it is elsewhere. The twins are left as they were
    (device, weights, running statistics, modes).
    """
    place = as_placement(device)
    with torch_placed(torch_model, place.torch) as there, keras_placed(place.tf):
        return _gradients(spec, there, keras_model, inputs, loss, seed, strict, reference, min_values)


def _gradients(spec: Any, torch_model: Any, keras_model: Any, inputs: Mapping[str, np.ndarray], loss: str, seed: int,
               strict: bool, reference: str, min_values: int) -> GradReport:
    """``gradient_parity`` with the twins in place."""
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
    trainable = [slot for slot in slots if slot.trainable]
    values = list(zip(trainable, read_slots(trainable, "torch", t_grads, "grad"),
                      read_slots(trainable, "tf", k_grads, "grad"), strict=True))
    scales = layer_scales([(s, t if reference == "torch" else k) for s, t, k in values])
    rows = [compare_slot(slot, tg, kg, atol_rel, rtol, reference, scales[slot.layer]) for slot, tg, kg in values]
    one_sided = mark_frozen(rows, trainable, keras_model)
    loss_tol = atol_rel * max(abs(t_loss), abs(k_loss))
    diff = abs(t_loss - k_loss)
    notes = [f"dropout switched off in both twins ({', '.join(switched)}): the frameworks' random streams "
             "cannot match" if switched else "no dropout with a non-zero rate in either twin"]
    if choice.reason:
        notes.append(f"batch {choice.used} instead of {batch}: {choice.reason}")
    if one_sided:
        notes.append(f"frozen on one side only: {', '.join(one_sided)}")
    if frozen_batchnorms(torch_model):
        notes.append(f"{FROZEN_BN_NOTE}: {', '.join(frozen_batchnorms(torch_model))}")
    return GradReport(
        batch=choice.to_dict(),
        loss={"kind": loss, "description": objective.describe(), "torch": t_loss, "tf": k_loss, "abs_diff": diff,
              "atol": loss_tol, "passed": diff <= loss_tol},
        rows=rows, tolerance={"atol": atol_rel, "rtol": rtol, "scale_relative": True, "strict": strict,
                              "reason": reason},
        mode="training mode: BatchNorm uses batch statistics; dropout off", notes=notes)
