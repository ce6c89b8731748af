"""The gradient fold: a product that a linear, row-wise chain only reduces becomes one product
with a folded weight, with the same values; anything else is left as it is."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from gradcam_model.export.onnx_fold import fold_reduced_gradients

_W = np.random.default_rng(0).standard_normal((8, 24)).astype(np.float32)


def _model(tail: list, out_shape: list) -> onnx.ModelProto:
    """``x [N, 8] @ W [8, 24]`` then ``tail`` (nodes reading ``y``, ending in ``out``)."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]), *tail]
    constants = [
        numpy_helper.from_array(_W, "w"),
        numpy_helper.from_array(np.array([0, 6, 4], np.int64), "rows_of_6x4"),
        numpy_helper.from_array(np.array([2], np.int64), "last"),
        numpy_helper.from_array(np.array([0], np.int64), "first"),
        numpy_helper.from_array(np.float32(3.0), "three"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, out_shape)],
        constants,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)


def _run(model, x) -> np.ndarray:
    onnx.checker.check_model(model)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _folded(model) -> tuple[onnx.ModelProto, int]:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy, fold_reduced_gradients(copy)


def test_a_reduced_product_reads_a_folded_weight_with_the_same_values():
    """Reshape to [N, 6, 4], divide by a constant, mean over the 4: 24 columns become 6."""
    tail = [
        helper.make_node("Reshape", ["y", "rows_of_6x4"], ["r"]),
        helper.make_node("Div", ["r", "three"], ["d"]),
        helper.make_node("ReduceMean", ["d", "last"], ["out"], keepdims=0),
    ]
    model = _model(tail, ["batch", 6])
    folded, count = _folded(model)
    assert count == 1
    assert [n.op_type for n in folded.graph.node] == ["Gemm"]
    assert [tuple(i.dims) for i in folded.graph.initializer] == [(6, 8)]  # W is gone: nothing reads it
    x = np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32)  # not the probe's batch of 2
    np.testing.assert_allclose(_run(folded, x), _run(model, x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("tail", "out_shape", "why"),
    [
        (
            [
                helper.make_node("Reshape", ["y", "rows_of_6x4"], ["r"]),
                helper.make_node("Relu", ["r"], ["a"]),
                helper.make_node("ReduceMean", ["a", "last"], ["out"], keepdims=0),
            ],
            ["batch", 6],
            "a nonlinear op stops the chain",
        ),
        (
            [
                helper.make_node("Reshape", ["y", "rows_of_6x4"], ["r"]),
                helper.make_node("Div", ["three", "r"], ["d"]),
                helper.make_node("ReduceMean", ["d", "last"], ["out"], keepdims=0),
            ],
            ["batch", 6],
            "c / g is not linear in g",
        ),
        ([helper.make_node("Reshape", ["y", "rows_of_6x4"], ["out"])], ["batch", 6, 4], "no reduction to gain from"),
        (
            [
                helper.make_node("ReduceSum", ["y", "first"], ["s"], keepdims=1),
                helper.make_node("Reshape", ["s", "rows_of_6x4"], ["r"]),
                helper.make_node("ReduceMean", ["r", "last"], ["out"], keepdims=0),
            ],
            [1, 6],
            "rows mixed: not row-wise",
        ),
    ],
)
def test_other_chains_are_left_alone(tail, out_shape, why):
    model = _model(tail, out_shape)
    folded, count = _folded(model)
    assert count == 0, why
    assert folded == model
