"""A user's own pair of optimizers (a torch one and a Keras one) read into the settings training parity
builds each side with, weight decay included, so that a difference between them shows.

Supported: torch ``SGD`` (momentum, no Nesterov or dampening), ``Adam`` and ``AdamW`` (no amsgrad);
Keras ``SGD``, ``Adam`` and ``AdamW`` with a constant learning rate. Weight decay keeps each
framework's semantics (``converters.lint.optimizer_settings``): torch SGD/Adam couple it to the
gradient, torch AdamW and Keras decouple it. Which parameters are decayed is read per side: torch
parameter groups (one nonzero factor), Keras ``exclude_from_weight_decay``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from parity.diagnostics.optimizers import OptimizerConfig
from parity.errors import UsageError

SUPPORTED = "torch SGD/Adam/AdamW and keras SGD/Adam/AdamW"


def is_optimizer(obj: Any) -> bool:
    """Whether ``obj`` is an optimizer object (not a name such as 'adam')."""
    return not isinstance(obj, str) and (hasattr(obj, "param_groups") or hasattr(obj, "apply_gradients"))


def pair_config(optimizers: Sequence[Any], torch_model: Any, keras_model: Any) -> OptimizerConfig:
    """One ``OptimizerConfig`` (torch side, with ``tf`` the Keras side) from the twins' two optimizers."""
    torch_opt = [o for o in optimizers if hasattr(o, "param_groups")]
    keras_opt = [o for o in optimizers if hasattr(o, "apply_gradients")]
    if len(optimizers) != 2 or len(torch_opt) != 1 or len(keras_opt) != 1:
        got = ", ".join(type(o).__name__ for o in optimizers)
        raise UsageError(f"expected the twins' two optimizers, one torch and one Keras, got: {got}; pass "
                         "optimizers=(torch_optimizer, keras_optimizer), or names ('sgd', 'adam')")
    ct, ck = torch_side(torch_opt[0], torch_model), keras_side(keras_opt[0], keras_model)
    if ct.name != ck.name:
        raise UsageError(f"the twins' optimizers are different algorithms ({type(torch_opt[0]).__name__} and "
                         f"{type(keras_opt[0]).__name__}); training parity steps one algorithm in both")
    label = f"{type(torch_opt[0]).__name__}/{type(keras_opt[0]).__name__}"
    return OptimizerConfig(**{**ct.__dict__, "tf": ck, "label": label})


def torch_side(opt: Any, model: Any) -> OptimizerConfig:
    """A torch optimizer's settings; its decayed parameters by name in ``model``."""
    import torch

    groups = opt.param_groups
    g = groups[0]
    if g.get("nesterov") or g.get("dampening") or g.get("amsgrad") or g.get("maximize"):
        raise UsageError(f"torch {type(opt).__name__} with nesterov/dampening/amsgrad/maximize is not supported "
                         f"by training parity; supported: {SUPPORTED} with their defaults for those")
    factors = {float(x.get("weight_decay", 0.0)) for x in groups} - {0.0}
    if len(factors) > 1:
        raise UsageError(f"torch {type(opt).__name__} has parameter groups with different weight decays "
                         f"{sorted(factors)}; training parity compares one nonzero factor per optimizer")
    wd = factors.pop() if factors else 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = [names.get(id(p), "") for x in groups if float(x.get("weight_decay", 0.0)) for p in x["params"]]
    every = len(decayed) == sum(len(x["params"]) for x in groups)
    common = {"lr": _number(g["lr"], "lr"), "weight_decay": wd,
              "coupled": not bool(g.get("decoupled_weight_decay", False)),
              "decay_only": None if every or not wd else tuple(decayed)}
    if isinstance(opt, torch.optim.SGD):
        return OptimizerConfig("sgd", momentum=float(g.get("momentum", 0.0)), **common)
    if isinstance(opt, torch.optim.Adam):  # AdamW included
        b1, b2 = g["betas"]
        return OptimizerConfig("adam", beta1=float(b1), beta2=float(b2), epsilon=float(g["eps"]), **common)
    raise UsageError(f"torch optimizer {type(opt).__name__} is not supported by training parity; "
                     f"supported: {SUPPORTED}")


def keras_side(opt: Any, model: Any) -> OptimizerConfig:
    """A Keras optimizer's settings; its decayed variables by path in ``model``."""
    import keras

    if isinstance(opt.learning_rate, keras.optimizers.schedules.LearningRateSchedule):
        raise UsageError("a Keras learning-rate schedule is not supported by training parity; "
                         "use a constant learning rate on both sides")
    wd = float(opt.weight_decay) if opt.weight_decay is not None else 0.0
    uses = getattr(opt, "_use_weight_decay", None)  # Keras's own test, exclude_from_weight_decay included
    paths = [v.path for v in model.trainable_variables if uses is None or uses(v)]
    every = len(paths) == len(model.trainable_variables)
    common = {"lr": _number(opt.learning_rate, "learning_rate"), "weight_decay": wd, "coupled": False,
              "decay_only": None if every or not wd else tuple(paths)}
    if isinstance(opt, keras.optimizers.SGD):
        if opt.nesterov:
            raise UsageError(f"Keras SGD with nesterov=True is not supported by training parity; supported: "
                             f"{SUPPORTED}")
        return OptimizerConfig("sgd", momentum=float(opt.momentum), **common)
    if isinstance(opt, keras.optimizers.Adam | keras.optimizers.AdamW):
        if opt.amsgrad:
            raise UsageError("Keras Adam with amsgrad=True is not supported by training parity")
        return OptimizerConfig("adam", beta1=float(opt.beta_1), beta2=float(opt.beta_2),
                               epsilon=float(opt.epsilon), **common)
    raise UsageError(f"Keras optimizer {type(opt).__name__} is not supported by training parity; "
                     f"supported: {SUPPORTED}")


def _number(value: Any, what: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UsageError(f"the optimizer's {what} is {value!r}; training parity needs a constant number") from None
