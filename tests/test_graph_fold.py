"""Constant folding of sequences: torch splits a packed weight with SplitToSequence + SequenceAt."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from converters.graph import fold


def _split_model(position_is_constant: bool) -> onnx.ModelProto:
    w = np.arange(48, dtype=np.float32).reshape(6, 8)
    nodes = [helper.make_node("SplitToSequence", ["w", "sizes"], ["seq"], axis=0),
             helper.make_node("SequenceAt", ["seq", "pos" if position_is_constant else "i"], ["part"]),
             helper.make_node("MatMul", ["x", "part"], ["y"])]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([2, 4], np.int64), "sizes")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4 if position_is_constant else 2])]
    if position_is_constant:
        inits.append(numpy_helper.from_array(np.array(1, np.int64), "pos"))
    else:
        inputs.append(helper.make_tensor_value_info("i", TensorProto.INT64, []))
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_a_constant_sequence_read_at_a_constant_position_folds_to_the_weight_part() -> None:
    graph = fold(_split_model(position_is_constant=True))
    np.testing.assert_array_equal(graph.consts["part"], np.arange(48, dtype=np.float32).reshape(6, 8)[2:])
    assert "w" in graph.provenance["part"]  # the part is still known to come from the weight
    assert [n.op_type for n in graph.nodes] == ["MatMul"]


def test_a_sequence_read_at_a_runtime_position_stays_in_the_graph() -> None:
    graph = fold(_split_model(position_is_constant=False))
    assert [n.op_type for n in graph.nodes] == ["SplitToSequence", "SequenceAt", "MatMul"]
    assert any("sequence" in why for why in graph.unfolded.values())
