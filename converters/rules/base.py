"""What every rule shares: the ParamGroup it returns, the ``@extractor`` registry, and small
helpers for reading ONNX nodes. Imports no rule and not ``converters.params``.

One extractor per ONNX op type; a second registration for the same op is a bug and raises.
The canonical layout of each kind's tensors is listed in ``converters.params``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from converters.graph import Graph


@dataclass
class ParamGroup:
    """The parameters of one layer as found in the graph, in canonical layout."""

    kind: str
    nodes: list[str]
    tensors: dict[str, np.ndarray | None]
    attrs: dict[str, Any] = field(default_factory=dict)
    sources: frozenset[str] = frozenset()  # initializers these tensors came from
    input: str = ""  # the data tensor flowing in
    output: str = ""  # the tensor leaving the group (after any absorbed bias/affine nodes)

    @property
    def label(self) -> str:
        return f"{self.kind} {'+'.join(self.nodes)}"

    def shapes(self) -> dict[str, tuple[int, ...] | None]:
        return {k: (tuple(v.shape) if v is not None else None) for k, v in self.tensors.items()}


# (graph, node, claimed node names) -> the node's group (several when one node holds several
# layers, e.g. projections merged into one MatMul by a simplifier), or None when it is not one
Extractor = Callable[[Graph, Any, set[str]], "ParamGroup | list[ParamGroup] | None"]
_EXTRACTORS: dict[str, Extractor] = {}


def extractor(op_type: str) -> Callable[[Extractor], Extractor]:
    """Register the extractor for ONNX op ``op_type``; a second one for the same op raises."""

    def decorate(fn: Extractor) -> Extractor:
        if op_type in _EXTRACTORS:
            raise ValueError(f"an extractor for ONNX op {op_type!r} is registered twice")
        _EXTRACTORS[op_type] = fn
        return fn

    return decorate


def extractor_for(op_type: str) -> Extractor | None:
    """The extractor registered for ``op_type``, or None."""
    return _EXTRACTORS.get(op_type)


def registered_ops() -> list[str]:
    """The ONNX op types with a registered extractor, sorted."""
    return sorted(_EXTRACTORS)


def node_name(node: Any) -> str:
    return node.name or f"{node.op_type}({node.output[0]})"


def attrs_of(node: Any) -> dict[str, Any]:
    """A node's attributes as Python values (strings decoded)."""
    from onnx import helper

    out = {}
    for a in node.attribute:
        value = helper.get_attribute_value(a)
        out[a.name] = value.decode() if isinstance(value, bytes) else value
    return out


def initializers_of(graph: Graph, *names: str) -> frozenset[str]:
    """The initializers the (folded) tensors ``names`` were computed from."""
    return frozenset().union(*(graph.provenance.get(n, frozenset()) for n in names if n))


def f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def float_const(graph: Graph, name: str) -> np.ndarray | None:
    """The value of ``name`` if it is a floating-point constant, else None."""
    value = graph.const(name)
    if value is None or not np.issubdtype(value.dtype, np.floating):
        return None
    return value


def other_input(node: Any, tensor: str) -> str:
    """The operand of a binary node that is not ``tensor``."""
    return node.input[1] if node.input[0] == tensor else node.input[0]


def per_channel(graph: Graph, node: Any, tensor: str) -> tuple[np.ndarray, str] | None:
    """The float per-channel constant operand of a binary op whose other operand is ``tensor``."""
    other = other_input(node, tensor)
    value = float_const(graph, other)
    if value is None or value.size < 2 or sum(d > 1 for d in value.shape) != 1:
        return None
    return f32(value.reshape(-1)), other
