"""The tf2onnx export's memory fix: each optimizer pass rewrites a node into a fresh NodeProto.

tf2onnx clears and refills every node's attributes after each optimizer pass; under the upb
protobuf runtime the cleared copy stays in the message's arena, so each pass kept one more
copy of the weights (scripts/bench_memory.py measures the MiniLM check). The arena is not
visible from Python, so these tests pin the mechanism and that the exported graph is unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch  # noqa: F401  (torch before TensorFlow)

from converters import export


def test_update_proto_writes_a_fresh_node_proto_with_the_same_content() -> None:
    from tf2onnx.graph import Graph, Node

    weights = np.arange(12, dtype=np.float32).reshape(3, 4)
    graph = Graph([], opset=export.OPSET)
    const = graph.make_const("w", weights)
    original = Node.update_proto
    before = const.op.SerializeToString()
    first = const.op
    with export.fresh_node_protos():
        const.update_proto()
        second = const.op
        const.update_proto()
    assert first is not second and const.op is not second  # a new message per update: the old arena can go
    assert const.op.SerializeToString() == before  # name, type, inputs, outputs and the tensor, unchanged
    assert first.SerializeToString() == before  # the old message is not modified, only let go
    np.testing.assert_array_equal(const.get_tensor_value(as_list=False), weights)
    assert Node.update_proto is original  # tf2onnx is left as it was found


def test_fresh_node_protos_restores_tf2onnx_after_an_error() -> None:
    from tf2onnx.graph import Node

    original = Node.update_proto
    with pytest.raises(RuntimeError, match="inside"), export.fresh_node_protos():
        raise RuntimeError("inside")
    assert Node.update_proto is original


def _export(tmp_path: Path, name: str) -> tuple[list[str], list[bytes], np.ndarray]:
    import keras
    import onnx
    import onnxruntime as ort

    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="gelu", name="fc1")(inp)  # exact GELU: the Erfc handler runs too
    model = keras.Model(inp, keras.layers.Dense(3, name="fc2")(keras.layers.LayerNormalization()(hidden)))
    x = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
    path = export.export_keras(model, [x], tmp_path / f"{name}.onnx", input_names=["x"], output_names=["y"])
    proto = onnx.load(str(path))
    y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[0]
    return ([n.op_type for n in proto.graph.node], sorted(t.raw_data for t in proto.graph.initializer), y)


def test_the_exported_graph_is_the_same_with_and_without_fresh_node_protos(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    ops, weights, y = _export(tmp_path, "fresh")
    monkeypatch.setattr(export, "fresh_node_protos", _unchanged)
    ops_plain, weights_plain, y_plain = _export(tmp_path, "plain")
    assert ops == ops_plain and len(ops) > 5
    assert weights == weights_plain and len(weights) >= 4
    np.testing.assert_array_equal(y, y_plain)  # the same graph and weights: bit-identical outputs


def _unchanged() -> object:
    import contextlib

    return contextlib.nullcontext()
