"""Names in the generated code, derived from the source's own module and layer names."""

from __future__ import annotations

import ast
import keyword
import re
from typing import Any

_CALL_SUFFIX = re.compile(r"_\d+$")  # tf2onnx scopes a Keras layer's ops "<layer>_1/...", numbered per call
_OP_SCOPES = {"convolution", "batchnorm", "MatMul", "BiasAdd", "Cast", "ReadVariableOp", "Tensordot", "Reshape",
              "depthwise", "conv1d", "ExpandDims", "Squeeze", "add", "mul", "mul_1", "GatherV2", "split", "Cast_1"}


def tf_layer(name: str) -> str:
    """The Keras layer name in a tf2onnx node or tensor name (``model_1/layer1.0.conv1_1/convolution/x:0``)."""
    parts = [p for p in name.split(":")[0].split("/") if p]
    scopes = [_CALL_SUFFIX.sub("", p) for p in parts[1:-1] if p not in _OP_SCOPES]
    # inside a layer, a recurrent layer's own scopes: its cell, and a Bidirectional's forward_/backward_ layers
    scopes = scopes[:1] + [p for p in scopes[1:] if not p.endswith("_cell") and not p.startswith(("forward_", "backward_"))]
    return scopes[-1] if scopes else ""


def torch_module(name: str) -> str:
    """The module path in a torch parameter name (``layer1.0.conv1.weight``) or a legacy node scope."""
    if "/" in name:
        parts = [p for p in name.split("/") if p]
        return ".".join(parts[:-1])
    if "." in name and not name.startswith("onnx::"):
        return name.rsplit(".", 1)[0]
    return ""


def _legacy_scope(name: str) -> str:
    """'/layer1/layer1.0/conv1/Conv' -> 'layer1.0.conv1' (torch legacy exporter node names)."""
    parts = [p for p in name.split("/")[1:-1] if p]
    path = ""
    for part in parts:
        path = part if not path or part.startswith(path + ".") else f"{path}.{part}"
    return path


def torch_scope_of(node: Any) -> str:
    """The torch module path a node of a torch export belongs to ('' for the root or unknown):
    the dynamo exporter's recorded name scopes, else the legacy exporter's node name."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return ""
            return str(scopes[-2]) if len(scopes) >= 2 else ""
    return _legacy_scope(node.name) if node.name.startswith("/") else ""


def node_label(name: str, source: str) -> str:
    """A short label for a parameter-free node: its Keras layer, or the torch op (``node_relu_3`` -> ``relu_3``)."""
    if source == "tf":
        found = tf_layer(name)
        if found:
            return found
        return re.sub(r"[^0-9A-Za-z_.]", "_", name.split(":")[0]).strip("_") or "op"
    return re.sub(r"^node_", "", re.sub(r"[^0-9A-Za-z_.]", "_", name)).strip("_") or "op"


def identifier(name: str) -> str:
    """A Python identifier for ``name`` (``layer1.0.conv1`` -> ``layer1_0_conv1``)."""
    out = re.sub(r"\W", "_", name).strip("_") or "layer"
    if out[0].isdigit():
        out = f"l{out}"
    return f"{out}_" if keyword.iskeyword(out) else out


def class_name(name: str) -> str:
    """A class name for a model (``resnet18`` -> ``Resnet18``, ``my_net`` -> ``MyNet``)."""
    parts = [p for p in re.split(r"[^0-9A-Za-z]", name) if p]
    out = "".join(p[:1].upper() + p[1:] for p in parts) or "Model"
    return f"M{out}" if out[0].isdigit() else out


class Unique:
    """Hands out names, each once: a repeated name gets ``_2``, ``_3`` ..."""

    def __init__(self, taken: set[str] | None = None) -> None:
        self.taken = set(taken or ())

    def __call__(self, name: str) -> str:
        out, k = name, 2
        while out in self.taken:
            out, k = f"{name}_{k}", k + 1
        self.taken.add(out)
        return out
