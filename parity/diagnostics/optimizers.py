"""The optimizers of training parity: one configuration, set on both sides and stepped together."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from parity.errors import UsageError

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
    weight_decay: float = 0.0  # the optimizer's own weight decay (not a regulariser in the loss)
    coupled: bool = False  # True: L2 added to the gradient (torch SGD/Adam); False: decoupled (AdamW, Keras)
    decay_only: tuple[str, ...] | None = None  # the decayed parameters by their own side's names; None: all
    tf: OptimizerConfig | None = None  # the Keras side's own settings where they may differ (a user's pair)
    label: str = ""  # the run's name in the report; '' : ``name``

    @property
    def run_name(self) -> str:
        return self.label or self.name

    def side(self, framework: str) -> OptimizerConfig:
        """The settings one framework's optimizer is built with."""
        return self.tf if framework == "tf" and self.tf is not None else self

    def decay(self) -> dict[str, Any]:
        """The weight decay as set: factor, semantics and which parameters."""
        if not self.weight_decay:
            return {"weight_decay": 0.0}
        how = "L2 added to the gradient (coupled)" if self.coupled else "decoupled: p -= lr * wd * p"
        return {"weight_decay": self.weight_decay, "decay": how,
                "decayed": "all" if self.decay_only is None else list(self.decay_only)}

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "lr": self.lr}
        if self.name == "sgd":
            d.update(momentum=self.momentum, nesterov=False, dampening=0.0, **self.decay())
        else:
            eps = self.epsilon
            d.update(beta1=self.beta1, beta2=self.beta2, amsgrad=False, **self.decay())
            d["epsilon"] = ({"torch": eps, "tf": f"{eps} * sqrt(1 - beta2^t) per step (= torch's placement)",
                             "aligned": True} if eps is not None else
                            {"torch": DEFAULT_EPSILON["torch"], "tf": DEFAULT_EPSILON["tf"], "aligned": False,
                             "note": "each framework's default, and Keras adds it before the bias correction"})
        if self.tf is not None:
            tf = dataclasses.replace(self.tf, tf=None).describe()
            if self.name == "adam":
                same = (self.epsilon is not None and self.tf.epsilon is not None
                        and math.isclose(self.epsilon, self.tf.epsilon, rel_tol=1e-6))
                tf["epsilon"] = {"tf": self.tf.epsilon, "aligned": same, "note": (
                    "moved to torch's placement per step" if same else "Keras's own, added before the bias correction")}
            d = {"torch": d, "tf": tf}
        return d


def default_optimizer(name: str) -> OptimizerConfig:
    """The default SGD (lr 1e-3, momentum 0.9) or Adam (lr 1e-4); see parity.diagnostics.training."""
    if name == "sgd":
        return OptimizerConfig("sgd", lr=1e-3, momentum=0.9)
    if name == "adam":
        return OptimizerConfig("adam", lr=1e-4)
    raise UsageError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)} (or 'both')")


class Optimizers:
    """The same optimizer in both frameworks, stepped together; each side built from its own settings
    (``cfg.side``), weight decay included, so that a mismatch between them shows as a divergence."""

    def __init__(self, cfg: OptimizerConfig, torch_params: list[Any], keras_variables: list[Any],
                 torch_names: dict[int, str] | None = None) -> None:
        import keras
        import torch

        self.cfg = cfg
        ct, ck = cfg.side("torch"), cfg.side("tf")
        names = torch_names or {}
        decayed = [p for p in torch_params if ct.weight_decay and _decayed(ct, names.get(id(p), ""))]
        rest = [p for p in torch_params if not any(p is q for q in decayed)]
        groups = [g for g in ({"params": decayed, "weight_decay": ct.weight_decay if ct.coupled else 0.0},
                              {"params": rest, "weight_decay": 0.0}) if g["params"]]
        self.torch_decoupled = [] if ct.coupled else decayed  # p -= lr wd p before each step (as AdamW, Keras)
        self.keras_coupled = ([i for i, v in enumerate(keras_variables) if _decayed(ck, v.path)]
                              if ck.coupled and ck.weight_decay else [])
        keras_wd = ck.weight_decay if ck.weight_decay and not ck.coupled else None
        if cfg.name == "sgd":
            self.torch = torch.optim.SGD(groups, lr=ct.lr, momentum=ct.momentum, dampening=0.0, nesterov=False)
            self.keras = keras.optimizers.SGD(learning_rate=ck.lr, momentum=ck.momentum, nesterov=False,
                                              weight_decay=keras_wd)
        elif cfg.name == "adam":
            eps_t = ct.epsilon if ct.epsilon is not None else DEFAULT_EPSILON["torch"]
            self.torch = torch.optim.Adam(groups, lr=ct.lr, betas=(ct.beta1, ct.beta2), eps=eps_t, amsgrad=False)
            kwargs = {} if ck.epsilon is None else {"epsilon": ck.epsilon}
            self.keras = keras.optimizers.Adam(learning_rate=ck.lr, beta_1=ck.beta1, beta_2=ck.beta2,
                                               amsgrad=False, weight_decay=keras_wd, **kwargs)
        else:
            raise UsageError(f"unknown optimizer {cfg.name!r}; expected one of {', '.join(OPTIMIZERS)}")
        if keras_wd is not None and ck.decay_only is not None:
            self.keras.exclude_from_weight_decay(var_list=[v for v in keras_variables if not _decayed(ck, v.path)])
        # Keras's epsilon is moved to torch's placement only where both sides ask for the same epsilon
        self.align_epsilon = (cfg.name == "adam" and ct.epsilon is not None and ck.epsilon is not None
                              and math.isclose(ct.epsilon, ck.epsilon, rel_tol=1e-6))
        self.variables = keras_variables
        self.keras_epsilons: list[float] = []

    def step(self, t: int, keras_grads: list[Any]) -> None:
        """Apply step ``t`` (1-based) in both frameworks (``keras_grads`` in ``variables`` order)."""
        import torch

        ct, ck = self.cfg.side("torch"), self.cfg.side("tf")
        with torch.no_grad():
            for p in self.torch_decoupled:
                p.mul_(1.0 - ct.lr * ct.weight_decay)
        self.torch.step()
        if self.align_epsilon:
            self.keras.epsilon = ck.epsilon * math.sqrt(1.0 - ck.beta2 ** t)
        if self.cfg.name == "adam":
            self.keras_epsilons.append(float(self.keras.epsilon))
        grads = list(keras_grads)
        for i in self.keras_coupled:  # L2 added to the gradient, as torch's coupled weight decay
            grads[i] = grads[i] + ck.weight_decay * self.variables[i].value
        self.keras.apply_gradients(zip(grads, self.variables, strict=True))


def _decayed(cfg: OptimizerConfig, name: str) -> bool:
    return cfg.decay_only is None or name in cfg.decay_only


GAP_OVER_ROUNDING = 4.0  # the twins' gradient gap over the reference's own float32 rounding (at most 3.3 measured)


class AdamAllowance:
    """Per element of each trained canonical tensor: how far Adam's parameters may drift apart
    through float32 rounding of the gradients alone (see parity.diagnostics.training).

    The reference twin's gradients g_1..g_N are recorded and Adam's update is differentiated
    with respect to each of them: a gradient error of at most ``delta_s`` at step s moves the
    parameter after N steps by at most ``sum_s |dp_N / dg_s| delta_s`` to first order. Where a
    step's error is not small against ``sqrt(v_hat) + eps`` (a gradient near its rounding,
    whose sign may flip), each step also adds ``2 lr (delta / D) min(1, delta / D)``, which
    covers the second order and, at ``delta >= D``, the largest change of an update.
    ``delta_s = GAP_OVER_ROUNDING * rho_L * S_s``: ``rho_L`` the torch twin's own float32
    rounding of its layer's gradients (against the same step in float64), ``S_s`` the layer's
    largest reference gradient at step s. Nothing in it is measured against the other twin,
    so a difference between the twins cannot widen it.
    """

    def __init__(self, cfg: OptimizerConfig, layers: list[str], rounding: dict[str, float],
                 reference: str = "torch") -> None:
        self.cfg = cfg
        self.layers = layers
        self.rounding = rounding
        self.reference = reference
        self.history: list[list[np.ndarray]] = []  # per step, the reference's canonical gradients
        self.deltas: list[dict[str, float]] = []  # per step, the gradient error bound per layer

    def epsilon(self, t: int) -> float:
        """The reference optimizer's epsilon at step ``t``, in torch's placement (added to sqrt(v_hat))."""
        if self.cfg.epsilon is not None:
            return self.cfg.epsilon
        if self.reference == "torch":
            return DEFAULT_EPSILON["torch"]
        return DEFAULT_EPSILON["tf"] / math.sqrt(1.0 - self.cfg.beta2 ** t)  # Keras adds it to sqrt(v)

    def step(self, grads: list[np.ndarray], scales: dict[str, float]) -> None:
        """Record the next step's canonical reference gradients (in ``layers`` order) and layer scales."""
        self.history.append([np.array(g, dtype=np.float32) for g in grads])
        self.deltas.append({layer: GAP_OVER_ROUNDING * self.rounding.get(layer, 0.0) * scales.get(layer, 0.0)
                            for layer in set(self.layers)})

    def totals(self) -> list[np.ndarray]:
        """The allowance per element of each tensor, after the recorded steps."""
        return [self._one([h[i].astype(np.float64) for h in self.history], [d[layer] for d in self.deltas])
                for i, layer in enumerate(self.layers)]

    def _one(self, g: list[np.ndarray], delta: list[float]) -> np.ndarray:
        cfg, n = self.cfg, len(g)
        b1, b2 = cfg.beta1, cfg.beta2
        m, v = np.zeros_like(g[0]), np.zeros_like(g[0])
        sens = [np.zeros_like(g[0]) for _ in range(n)]  # d p_N / d g_s, up to sign and the learning rate
        extra = np.zeros_like(g[0])
        for t in range(1, n + 1):
            m = b1 * m + (1.0 - b1) * g[t - 1]
            v = b2 * v + (1.0 - b2) * np.square(g[t - 1])
            bc1, bc2 = 1.0 - b1 ** t, 1.0 - b2 ** t
            m_hat, root = m / bc1, np.sqrt(v / bc2)
            denom = root + self.epsilon(t)
            inv_root = np.divide(1.0, root, out=np.zeros_like(root), where=root > 0)
            for s in range(1, t + 1):  # u_t = m_hat / denom; d m_hat / d g_s = a, d root / d g_s = b g_s / root
                a = (1.0 - b1) * b1 ** (t - s) / bc1
                b = (1.0 - b2) * b2 ** (t - s) / bc2
                sens[s - 1] += a / denom - m_hat * b * g[s - 1] * inv_root / np.square(denom)
            ratio = max(delta[:t]) / denom
            extra += 2.0 * ratio * np.minimum(1.0, ratio)
        linear = sum((np.abs(c) * d for c, d in zip(sens, delta, strict=True)), np.zeros_like(g[0]))
        return cfg.lr * (linear + extra)
