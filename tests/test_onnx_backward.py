"""The backward-graph passes: each rewrite computes the same values, and they fire on real gradients."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from gradcam_model import GradCAMModel, export_onnx, load_explainer, reference_cam
from gradcam_model.export.onnx_backward import (
    broadcast_instead_of_expand,
    clamped_affines_as_hardsigmoid,
    relu_masks_as_signs,
    simplify_backward,
)


def _run(model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _model(nodes, inputs, outputs, initializers) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)


def _value(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _rewritten(model, rewrite) -> tuple[onnx.ModelProto, int]:
    from gradcam_model.export.onnx_backward import _drop_dead
    from gradcam_model.export.onnx_passes import inferred_shapes

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    count = rewrite(copy.graph, inferred_shapes(copy))
    _drop_dead(copy.graph)
    return copy, count


def _mask_model(source: str) -> onnx.ModelProto:
    """``Cast(Greater(s, 0))`` of ``s = source(x)`` (``Identity``: a tensor that can be negative)."""
    nodes = [
        helper.make_node(source, ["x"], ["y"]),
        helper.make_node("Greater", ["y", "zero"], ["gt"]),
        helper.make_node("Cast", ["gt"], ["mask"], to=TensorProto.FLOAT),
    ]
    zero = numpy_helper.from_array(np.float32(0), "zero")
    return _model(nodes, [_value("x", [1, 10])], [_value("mask", [None] * 2)], [zero])


def test_relu_mask_becomes_a_sign_with_the_same_values():
    x = np.array([[-np.inf, -1.0, -1e-38, 0.0, 1e-40, 2.0**-126, 1e-30, 0.5, 1e30, np.inf]], np.float32)
    signed, count = _rewritten(_mask_model("Relu"), lambda graph, _: relu_masks_as_signs(graph))
    assert count == 1 and [n.op_type for n in signed.graph.node] == ["Relu", "Sign"]
    np.testing.assert_array_equal(_run(signed, {"x": x})[0], (x > 0).astype(np.float32))


def _run_elsewhere(model, feeds, runtime: str, tmp_path) -> np.ndarray:
    """The first output of ``model`` under OpenVINO (CPU, f32) or onnx.reference."""
    if runtime == "onnx-reference":
        from onnx.reference import ReferenceEvaluator

        with np.errstate(over="ignore"):  # 2^100 * inf: IEEE's inf, clamped; numpy warns
            return ReferenceEvaluator(model).run(None, feeds)[0]
    ov = pytest.importorskip("openvino")
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return compiled(feeds)[compiled.output(0)]


@pytest.mark.parametrize("runtime", ["openvino", "onnx-reference"])
def test_the_rewritten_masks_are_read_the_same_by_other_runtimes(runtime, tmp_path):
    """OpenVINO read the former HardSigmoid(alpha=2^127, beta=0) step as beta 0.5 (0.5 where y = 0)."""
    x = np.array([[-np.inf, -1.0, -1e-30, 0.0, 1e-40, 2.0**-126, 1e-30, 0.5, 1e30, np.inf]], np.float32)
    signed, _ = _rewritten(_mask_model("Relu"), lambda graph, _: relu_masks_as_signs(graph))
    want = (x > 0).astype(np.float32)
    if runtime == "openvino":  # its CPU plugin flushes denormals: 1e-40 is 0 after its Relu
        want[0, 4] = _run_elsewhere(_mask_model("Relu"), {"x": x}, runtime, tmp_path)[0, 4]
    np.testing.assert_array_equal(_run_elsewhere(signed, {"x": x}, runtime, tmp_path), want)


def test_a_mask_of_a_tensor_that_can_be_negative_is_left_as_it_is():
    model = _mask_model("Identity")
    kept, count = _rewritten(model, lambda graph, _: relu_masks_as_signs(graph))
    assert count == 0 and [n.op_type for n in kept.graph.node] == ["Identity", "Greater", "Cast"]


def test_clamped_affine_becomes_one_hardsigmoid():
    """The hardswish backward's step: clamp(9 * 2^100 - 2^100 * q, 0, 1) is 1 exactly where q < 9."""
    q = np.array([[-np.inf, 0.0, 1.0, 8.999999, 9.0, 9.000001, 1e30, np.inf]], np.float32)
    alpha, beta = -(2.0**100), 9.0 * 2.0**100
    nodes = [
        helper.make_node("Mul", ["q", "a"], ["m"]),
        helper.make_node("Add", ["b", "m"], ["s"]),
        helper.make_node("Clip", ["s", "lo", "hi"], ["step"]),
    ]
    inits = [numpy_helper.from_array(np.float32(v), n) for n, v in (("a", alpha), ("b", beta), ("lo", 0), ("hi", 1))]
    model = _model(nodes, [_value("q", [1, 8])], [_value("step", [None] * 2)], inits)
    rewritten, count = _rewritten(model, lambda graph, _: clamped_affines_as_hardsigmoid(graph))
    assert count == 1 and [n.op_type for n in rewritten.graph.node] == ["HardSigmoid"]
    want = np.array([[1, 1, 1, 1, 0, 0, 0, 0]], np.float32)
    np.testing.assert_array_equal(_run(model, {"q": q})[0], want)
    np.testing.assert_array_equal(_run(rewritten, {"q": q})[0], want)


@pytest.mark.parametrize("alpha, beta", [(0.0, 0.5), (0.25, 0.0)])
def test_a_clamp_with_a_zero_coefficient_stays_a_clamp(alpha, beta):
    """OpenVINO 2026.4 reads an explicit zero HardSigmoid beta as the default 0.5: never write one."""
    nodes = [
        helper.make_node("Mul", ["q", "a"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["s"]),
        helper.make_node("Clip", ["s", "lo", "hi"], ["step"]),
    ]
    inits = [numpy_helper.from_array(np.float32(v), n) for n, v in (("a", alpha), ("b", beta), ("lo", 0), ("hi", 1))]
    model = _model(nodes, [_value("q", [1, 8])], [_value("step", [None] * 2)], inits)
    kept, count = _rewritten(model, lambda graph, _: clamped_affines_as_hardsigmoid(graph))
    assert count == 0 and [n.op_type for n in kept.graph.node] == ["Mul", "Add", "Clip"]


def test_expand_is_left_to_broadcasting():
    rng = np.random.default_rng(2)
    nodes = [
        helper.make_node("Shape", ["a"], ["shape"]),
        helper.make_node("Expand", ["g", "shape"], ["e"]),
        helper.make_node("Div", ["e", "k"], ["d"]),
        helper.make_node("Mul", ["d", "a"], ["y"]),
    ]
    model = _model(
        nodes, [_value("g", ["n", 3, 1, 1]), _value("a", ["n", 3, 4, 4])], [_value("y", [None] * 4)],
        [numpy_helper.from_array(np.float32(16), "k")],
    )  # fmt: skip
    model.graph.value_info.append(_value("d", ["n", 3, 4, 4]))  # as torch.onnx records it
    feeds = {
        "g": rng.standard_normal((2, 3, 1, 1)).astype(np.float32),
        "a": rng.standard_normal((2, 3, 4, 4)).astype(np.float32),
    }
    rewritten, count = _rewritten(model, broadcast_instead_of_expand)
    assert count == 1 and "Expand" not in [n.op_type for n in rewritten.graph.node]
    # the recorded full shape of `d` is gone with the Expand (ONNX Runtime warned about it at every load)
    assert "d" not in [v.name for v in rewritten.graph.value_info]
    onnx.shape_inference.infer_shapes(rewritten, strict_mode=True)
    np.testing.assert_array_equal(_run(rewritten, feeds)[0], _run(model, feeds)[0])


class _Block(nn.Module):
    """conv+BN+ReLU, a depthwise conv+BN, a strided conv+BN with a residual shortcut."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.body = nn.Sequential(
            nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.Hardswish(),
        )  # fmt: skip
        self.short = nn.Sequential(nn.Conv2d(16, 32, 1, stride=2), nn.BatchNorm2d(32))
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x):
        x = self.stem(x)
        return self.head(self.body(x) + self.short(x))


@pytest.fixture(scope="module")
def block_artifact(tmp_path_factory):
    torch.manual_seed(0)
    model = _Block().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # running statistics far from 0/1, so a lost scale shows
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    wrapper = GradCAMModel(model, "stem", example_input=torch.randn(2, 3, 16, 16))
    return model, export_onnx(wrapper, tmp_path_factory.mktemp("onnx") / "block.onnx")


def test_the_exported_gradient_has_no_mask_compare_or_expand_left(block_artifact):
    _, path = block_artifact
    graph = onnx.load(str(path)).graph
    ops = [n.op_type for n in graph.node]
    assert "Greater" not in ops and "Expand" not in ops and "Sign" in ops
    # the hardswish backward: HardSigmoid steps, no Abs or two-sided Clip (the map's clamp_min has one bound)
    assert "Abs" not in ops and not [n for n in graph.node if n.op_type == "Clip" and len(n.input) == 3]
    assert "HardSigmoid" in ops


def test_the_rewritten_gradient_keeps_parity(block_artifact):
    model, path = block_artifact
    images = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    got = load_explainer(path)(images)
    want = reference_cam(model, "stem", images, return_all=True)
    np.testing.assert_array_equal(got.class_index, want[2].numpy())
    np.testing.assert_allclose(got.cam, want[4].numpy(), rtol=0, atol=1e-5)


def test_simplify_backward_is_idempotent(block_artifact):
    _, path = block_artifact
    proto = onnx.load(str(path))
    assert set(simplify_backward(proto).values()) == {0}
