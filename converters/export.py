"""Export a torch or Keras model to ONNX with the official exporters; one opset policy.

An exporter that refuses the model raises :class:`ConversionError` (the user's input,
exit code 2). A failure raised with this package's own code on the stack (an op handler
we give tf2onnx, a helper) is a bug of ours and propagates unchanged, as a traceback.
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import CodeType
from typing import Any, Literal, TypeVar

import numpy as np

from converters.errors import ConversionError
from converters.files import atomic_path
from converters.torch_hooks import eval_mode

# One opset for every exporter: tf2onnx supports up to 18, and the torch exporters
# produce 18 natively, so graphs from both sides use the same operator semantics.
OPSET = 18

TorchExporter = Literal["dynamo", "legacy"]
TORCH_EXPORTERS: tuple[str, ...] = ("dynamo", "legacy")

# Whether an exporter can keep parameters and running statistics recoverable
# (BatchNorm not folded into the preceding conv). tf2onnx runs TensorFlow's grappler,
# which folds gamma/sqrt(var+eps) into one constant: nothing separates them again.
LOSSLESS_SUPPORT: dict[str, bool] = {"dynamo": True, "legacy": True, "tf2onnx": False}

_PACKAGE = Path(__file__).resolve().parent
T = TypeVar("T")


def _raised_in_our_code(exc: BaseException, through: Sequence[CodeType] = ()) -> bool:
    """Whether this package's code was on the stack where ``exc`` (or an exception it wraps) was raised.

    ``run_exporter``'s own frame and the ``through`` trampolines (our function that only
    calls the user's model) do not count.
    """
    skip = {run_exporter.__code__, *through}
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        for frame, _ in traceback.walk_tb(current.__traceback__):
            code = frame.f_code
            if code not in skip and Path(code.co_filename).resolve().is_relative_to(_PACKAGE):
                return True
        current = current.__cause__ or current.__context__
    return False


def run_exporter(what: str, exporter: Callable[..., T], *args: Any, through: Sequence[CodeType] = (),
                 **kwargs: Any) -> T:
    """Call an official exporter; its refusal of the model becomes a ConversionError naming ``what``.

    Exporter internals raise anything when a model cannot be exported, so every exception
    counts as a refusal, except one raised with our code on the stack: that is our bug.
    """
    try:
        return exporter(*args, **kwargs)
    except ConversionError:
        raise
    except Exception as exc:
        if _raised_in_our_code(exc, through):
            raise
        raise ConversionError(f"{what} failed: {type(exc).__name__}: {exc}") from exc


def export_torch(
    model: Any,
    example_inputs: Sequence[np.ndarray],
    path: str | Path,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    exporter: TorchExporter = "dynamo",
    lossless: bool = False,
    dynamic_batch: bool = True,
) -> Path:
    """Export a torch module; ``lossless`` keeps BatchNorm as its own node."""
    import logging

    import torch

    # the dynamo exporter logs a warning per missing torchvision op; nothing here uses them
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    if exporter not in TORCH_EXPORTERS:
        raise ConversionError(f"unknown torch exporter {exporter!r}; choose one of {', '.join(TORCH_EXPORTERS)}")
    path = Path(path)
    args = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in example_inputs)
    what = f"torch {exporter} export of {type(model).__name__}"
    with atomic_path(path, suffix=".onnx") as tmp, warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()), eval_mode(model):  # the caller's modes come back after
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            dims = None
            if dynamic_batch:
                batch = torch.export.Dim("batch")
                dims = tuple({0: batch} for _ in args)
            run_exporter(what, torch.onnx.export,
                         model, args, str(tmp), dynamo=True, opset_version=OPSET, input_names=list(input_names),
                         output_names=list(output_names), dynamic_shapes=dims, optimize=not lossless,
                         verbose=False, external_data=False)
        else:
            axes = {n: {0: "batch"} for n in [*input_names, *output_names]} if dynamic_batch else None
            run_exporter(what, torch.onnx.export,
                         model, args, str(tmp), dynamo=False, opset_version=OPSET, input_names=list(input_names),
                         output_names=list(output_names), dynamic_axes=axes,
                         training=torch.onnx.TrainingMode.PRESERVE if lossless else torch.onnx.TrainingMode.EVAL,
                         do_constant_folding=not lossless)
        check_onnx(tmp)
    return path


def export_keras(
    model: Any,
    example_inputs: Sequence[np.ndarray],
    path: str | Path,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_batch: bool = True,
) -> Path:
    """Export a Keras model with ``tf2onnx.convert.from_function`` (``from_keras`` is broken on Keras 3)."""
    import tensorflow as tf
    import tf2onnx

    path = Path(path)
    signature = [
        tf.TensorSpec((None if dynamic_batch else a.shape[0], *a.shape[1:]), tf.as_dtype(a.dtype), name=n)
        for a, n in zip(example_inputs, input_names, strict=True)
    ]

    def call(*xs: Any) -> Any:  # a trampoline into the user's model: its failures are the model's
        return model(list(xs) if len(xs) > 1 else xs[0], training=False)

    import onnx

    errors: list[Exception] = []  # raised in our op handlers: tf2onnx logs them and leaves the op unconverted
    handlers = {"Erfc": (_recording(_erfc_as_erf, errors), [])}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        def convert() -> Any:
            return run_exporter(f"tf2onnx export of Keras model {model.name!r}", tf2onnx.convert.from_function,
                                tf.function(call), input_signature=signature, opset=OPSET,
                                custom_op_handlers=handlers, through=(call.__code__,))[0]

        try:
            try:  # without tf2onnx's safety copy of the whole graph per optimizer pass (GBs for a BERT)
                with _environ(TF2ONNX_CATCH_ERRORS="FALSE"), fresh_node_protos():
                    proto = convert()
            except ConversionError:
                if errors:
                    raise
                with fresh_node_protos():  # as tf2onnx does by default: an optimizer that fails is skipped
                    proto = convert()
            gc.collect()  # the graph copies hold reference cycles: free them now, not at the next collection
        finally:
            if errors:  # a bug of ours, whatever tf2onnx made of it
                raise errors[0]
    _reject_unconverted_ops(proto, model.name)
    _rename_outputs(proto, output_names)
    with atomic_path(path, suffix=".onnx") as tmp:
        onnx.save(proto, str(tmp))
        check_onnx(tmp)
    return path


@contextlib.contextmanager
def fresh_node_protos() -> Iterator[None]:
    """Within the block, tf2onnx rewrites each node's attributes into a new NodeProto.

    After every optimizer pass (36 for a BERT) tf2onnx's ``Node.update_proto`` clears the
    node's attributes and appends them again, constants' tensors included. Under the upb
    protobuf runtime a cleared field's memory stays in the message's arena until the message
    itself is freed, so each pass kept one more copy of every weight (87 MB a pass for
    all-MiniLM-L6-v2: 3.1 GB). A fresh message per update lets the old one and its arena go.
    """
    from onnx import NodeProto
    from tf2onnx.graph import Node

    original = Node.update_proto

    def update_proto(self: Any, external_tensor_storage: Any = None) -> None:
        # everything but the attributes, which ``original`` writes again; the old message is left as it was
        self._op = NodeProto(**{field.name: value for field, value in self._op.ListFields() if field.name != "attribute"})
        original(self, external_tensor_storage)

    Node.update_proto = update_proto
    try:
        yield
    finally:
        Node.update_proto = original


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    """Set environment variables for the block, then restore them."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _recording(handler: Callable[..., None], errors: list[Exception]) -> Callable[..., None]:
    """``handler`` for tf2onnx's ``custom_op_handlers``, keeping what it raises in ``errors``."""

    def run(*args: Any, **kwargs: Any) -> None:
        try:
            handler(*args, **kwargs)
        except Exception as exc:
            errors.append(exc)
            raise

    return run


def _reject_unconverted_ops(proto: Any, model_name: str) -> None:
    """tf2onnx leaves TF ops it cannot convert in the graph under their TF names."""
    import onnx

    bad = [(n.op_type, n.name) for n in proto.graph.node if n.domain in ("", "ai.onnx")
           and not onnx.defs.has(n.op_type)]
    if bad:
        ops = ", ".join(sorted({op for op, _ in bad}))
        hint = (" (a StatefulPartitionedCall is a layer TensorFlow compiles separately, e.g. a grouped, "
                "non-depthwise Conv2D that only runs under XLA; use groups=1 or a DepthwiseConv2D)"
                if any(op == "StatefulPartitionedCall" for op, _ in bad) else "")
        raise ConversionError(
            f"tf2onnx export of Keras model {model_name!r} left TensorFlow ops that ONNX does not have: {ops} "
            f"at node {bad[0][1]!r}{hint}"
        )


def _erfc_as_erf(ctx: Any, node: Any, name: str, args: Any) -> None:
    """tf2onnx passes TF's Erfc through unchanged, and ONNX has no Erfc: Keras's exact
    GELU would not export. Rewrite erfc(x) as 1 - erf(x)."""
    from tf2onnx import utils

    node.type = "Erf"
    out = node.output[0]
    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(out))
    one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1.0, dtype=dtype))
    ctx.insert_new_node_on_output("Sub", out, inputs=[one.output[0], out], name=utils.make_name(f"{node.name}_erfc"))


def _rename_outputs(proto: Any, output_names: Sequence[str]) -> None:
    """Give graph outputs the spec's names (tf2onnx names them after TF tensors)."""
    import onnx

    graph = proto.graph
    if len(graph.output) != len(output_names):
        raise ConversionError(f"the exported graph has {len(graph.output)} outputs, expected {list(output_names)}")
    for out, name in zip(graph.output, output_names, strict=True):
        if out.name == name:
            continue
        graph.node.append(onnx.helper.make_node("Identity", [out.name], [name], name=f"rename_{name}"))
        out.name = name


def export_model(
    model: Any, framework: str, example_inputs: Sequence[np.ndarray], path: str | Path, *,
    input_names: Sequence[str], output_names: Sequence[str], exporter: str = "dynamo", lossless: bool = False,
) -> Path:
    """Export either framework's model: ``framework`` is 'torch' or 'tf'."""
    if framework == "torch":
        return export_torch(model, example_inputs, path, input_names=input_names, output_names=output_names,
                            exporter=exporter, lossless=lossless)  # type: ignore[arg-type]
    if framework == "tf":
        return export_keras(model, example_inputs, path, input_names=input_names, output_names=output_names)
    raise ConversionError(f"unknown framework {framework!r}; expected 'torch' or 'tf'")


def check_onnx(path: str | Path) -> None:
    """Run ``onnx.checker`` and open the file in ONNX Runtime; raise ConversionError if either fails."""
    import onnx
    import onnxruntime as ort

    try:
        onnx.checker.check_model(str(path), full_check=False)
    except onnx.checker.ValidationError as exc:
        raise ConversionError(f"{path}: onnx.checker rejected the model: {exc}") from exc
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # a load failure raises; its warnings are noise
    try:
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        if not type(exc).__module__.startswith("onnxruntime"):  # ORT's own errors (Fail, InvalidGraph, ...)
            raise
        raise ConversionError(f"{path}: ONNX Runtime cannot load the model: {exc}") from exc
