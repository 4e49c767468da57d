"""The program a twin is generated from: its inputs, its ops in forward order, its outputs.

Framework-neutral: axes and pads are already those of the generated model's own variables
(channels-last for Keras, channels-first for torch), see ``converters.codegen.lower``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from converters.params import ParamGroup


@dataclass
class Op:
    """One line of the generated forward pass: ``out = kind(*args, **attrs)``."""

    kind: str  # "layer" (a parametric layer) or a parameter-free op ("relu", "add", "pad", ...)
    out: str  # the variable it defines
    args: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str = ""  # the layer's name, derived from the source's
    group: ParamGroup | None = None


@dataclass
class Input:
    name: str
    var: str
    shape: tuple[int | None, ...]  # without the batch dimension, in the generated model's layout
    dtype: str


@dataclass
class Program:
    model: str  # the model's name
    source: str  # "torch" or "tf": which exporter wrote the graph
    inputs: list[Input]
    ops: list[Op]
    outputs: list[tuple[str, str]]  # (variable, output name)
    channels_last: bool  # the generated model's layout
    # how each input and output variable maps to the graph's tensor: tensor = variable.transpose(perm)
    input_perms: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)
    output_perms: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def layers(self) -> list[Op]:
        """The parametric layers, in forward order."""
        return [op for op in self.ops if op.kind == "layer"]

    def uses(self) -> dict[str, int]:
        count: dict[str, int] = {}
        for op in self.ops:
            for a in op.args:
                count[a] = count.get(a, 0) + 1
        for var, _ in self.outputs:
            count[var] = count.get(var, 0) + 1
        return count


def variable_names(program: Program, inputs_reusable: bool) -> dict[str, str]:
    """Readable names: an op whose operand dies with it reuses the operand's name (a chain reads
    ``x = ...; x = ...``); a value that lives on (a residual's shortcut) gets a name of its own."""
    names = {i.var: i.name for i in program.inputs}
    last: dict[str, int] = {}
    for k, op in enumerate(program.ops):
        for a in op.args:
            last[a] = k
    kept = {var for var, _ in program.outputs}
    fresh = 0
    new_values = ("fill_like", "step_numbers")  # values unrelated to the operand's: `x2 = ones_like(ids)`
    taken = set(names.values())
    for k, op in enumerate(program.ops):
        first = op.args[0] if op.args else None
        reusable = first is not None and last.get(first) == k and first not in kept and \
            op.kind not in new_values and (inputs_reusable or all(first != i.var for i in program.inputs))
        if reusable:
            names[op.out] = names[first]  # type: ignore[index]
            continue
        fresh += 1
        while f"x{fresh}" in taken:
            fresh += 1
        names[op.out] = f"x{fresh}"
        taken.add(names[op.out])
    return names


def has_bias(op: Op) -> bool:
    """Whether the layer has a bias: a learned one in the graph (a zero bias counts only as a
    parameter of the source, not as a constant an exporter wrote for a layer without one)."""
    if op.attrs.get("folded_batchnorm"):  # a serving twin's layer: the folded BatchNorm's shift is its bias
        return True
    g = op.group
    if g is None or not op.attrs.get("use_bias", True):
        return False
    if g.attrs.get("use_bias"):  # the source says so (a Keras layer whose all-zero bias tf2onnx dropped)
        return True
    bias = g.tensors.get("bias")
    if bias is None:
        return False
    import numpy as np

    return bool(np.any(bias)) or any("bias" in s.lower() for s in g.sources)
