"""Pair torch modules with Keras layers: by name first, then through the port report's mapping."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from converters.report import LayerPort
from parity.diagnostics.localize.capture import Capture


@dataclass
class Pair:
    """A torch module and its Keras twin (either may be missing), and the port's target layer."""

    torch: str | None
    keras: str | None
    port_target: str | None = None


def align(tcap: Capture, kcap: Capture, port: Sequence[LayerPort], source_names: dict[str, str | None],
           target: str) -> list[Pair]:
    """Pairs by name first (plus a stacked torch RNN with its last Keras layer), then by the port mapping."""
    pairs: list[Pair] = []
    for name in tcap.order:
        k = name if name in kcap.values else None
        if k is None and name in tcap.rnn:
            stacked = sorted((n for n in kcap.values if n.startswith(name + ".l") and n[len(name) + 2:].isdigit()),
                             key=lambda n: int(n[len(name) + 2:]))
            k = stacked[-1] if stacked else None
        if k is not None:
            pairs.append(Pair(name, k))
    for layer in port:
        tgt, src = layer.target, source_names.get(layer.target)
        t_name, k_name = (tgt, src) if target == "torch" else (src, tgt)
        t_name = t_name if t_name in tcap.values else None
        k_name = k_name if k_name in kcap.values else None
        tgt_side = t_name if target == "torch" else k_name
        existing = next((p for p in pairs if tgt_side is not None
                         and (p.torch if target == "torch" else p.keras) == tgt_side), None)
        if existing is not None:
            existing.port_target = existing.port_target or tgt
            continue
        if target == "torch" and any(p.keras == k_name for p in pairs):
            k_name = None  # the source layer is already twinned (a stacked RNN's last layer)
        if target == "tf" and any(p.torch == t_name for p in pairs):
            t_name = None
        if t_name is None and k_name is None:
            continue
        pairs.append(Pair(t_name, k_name, tgt))
    t_pos = {n: i for i, n in enumerate(tcap.order)}
    k_pos = {n: i for i, n in enumerate(kcap.order)}

    def key(p: Pair) -> tuple[float, float]:
        if p.torch is not None:
            return float(t_pos[p.torch]), 0.0
        # a Keras-only row goes just before the first torch-paired row that follows it in Keras order
        after = [t_pos[q.torch] for q in pairs if q.torch is not None and q.keras is not None
                 and k_pos.get(q.keras, -1) > k_pos.get(p.keras or "", -1)]
        return (min(after) - 0.5 if after else math.inf), float(k_pos.get(p.keras or "", 0))

    return sorted(pairs, key=key)
