"""The serving twin: a generated program with each BatchNorm folded into the convolution before it.

``fold_program`` drops every BatchNorm layer whose input is a convolution's output read by nothing
else, and gives the convolution a bias (``Op.attrs["folded_batchnorm"]`` names the BatchNorm it
absorbed). The weights are folded by ``converters.fold_batchnorm`` on the ported full twin; the
generated ``model.py`` then has one layer per pair, as a hand-written serving model would.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from converters.codegen.program import Op, Program

__all__ = ["SERVING_HEADER", "fold_program", "generate_serving"]

SERVING_HEADER = ("Serving twin: each BatchNorm is folded into the convolution before it\n"
                  "(inference-only: for serving, not training).")


def _is_batchnorm(op: Op) -> bool:
    return op.kind == "layer" and (bool(op.attrs.get("restored_batchnorm")) or
                                   (op.group is not None and op.group.kind == "batchnorm"))


def fold_program(program: Program) -> tuple[Program, list[tuple[str, str]]]:
    """A copy of ``program`` without the BatchNorms that directly and solely follow a convolution.

    Returns ``(folded, [(convolution, batchnorm), ...])`` by layer name."""
    uses = program.uses()
    maker = {op.out: op for op in program.ops}
    rename: dict[str, str] = {}
    pairs: list[tuple[str, str]] = []
    ops: list[Op] = []
    for op in program.ops:
        args = [rename.get(a, a) for a in op.args]
        before = maker.get(args[0]) if args else None
        if _is_batchnorm(op) and len(args) == 1 and before is not None and before.kind == "layer" and \
                before.group is not None and before.group.kind == "conv" and uses.get(before.out) == 1 and \
                not before.attrs.get("folded_batchnorm"):
            rename[op.out] = before.out
            before.attrs["folded_batchnorm"] = op.name  # ``before`` is already a copy in ``ops``
            pairs.append((before.name, op.name))
            continue
        copied = dataclasses.replace(op, args=args, attrs=dict(op.attrs))
        maker[copied.out] = copied
        ops.append(copied)
    outputs = [(rename.get(v, v), name) for v, name in program.outputs]
    perms = {rename.get(v, v): p for v, p in program.output_perms.items()}
    folded = dataclasses.replace(program, ops=ops, outputs=outputs, output_perms=perms,
                                 input_perms=list(program.input_perms))
    return folded, pairs


def generate_serving(path: str | Path, target: str, *, model: str = "", origin: str = "",
                     spatial_inputs: set[str] | None = None,
                     hints: dict[str, dict[str, Any]] | None = None) -> tuple[Any, Any, list[tuple[str, str]]]:
    """``(full, serving, pairs)``: the generated twin of the ONNX file ``path`` (``converters.codegen.generate``)
    and its serving form (a ``Generated`` whose code has each folded pair as one layer)."""
    from converters.codegen import Generated, generate, header, keras_emit, torch_emit
    from converters.graph import fold, load_onnx

    path = Path(path)
    full = generate(path, target, model=model, origin=origin, spatial_inputs=spatial_inputs, hints=hints)
    program, pairs = fold_program(full.program)
    head = header(fold(load_onnx(path)), target, model or path.stem, origin or model or path.name)
    head = head.removesuffix('"""') + SERVING_HEADER + '\n"""'
    code = (keras_emit if target == "tf" else torch_emit).render(program, head)
    return full, Generated(code, program, target), pairs
