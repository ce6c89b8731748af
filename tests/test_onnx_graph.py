"""The exported ONNX graph itself: one copy of every weight, and other ONNX runtimes agree."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from gradcam_model import GradCAMModel, export_onnx, load_explainer, reference_cam


@pytest.fixture(scope="module")
def mlp_head(tmp_path_factory):
    """Three Linear layers between the target layer and the logits, two explained classes:
    each weight is read by the forward and by two gradient passes. The first one's gradient
    is only averaged (pool backward, then Grad-CAM's spatial mean): it is folded."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
        nn.Linear(128, 10),
    ).eval()  # fmt: skip
    wrapper = GradCAMModel(model, "3", example_input=torch.randn(2, 3, 32, 32), top_k=2)
    path = export_onnx(wrapper, tmp_path_factory.mktemp("onnx") / "mlp.onnx")
    return model, path


def _weights(proto) -> dict[str, np.ndarray]:
    """The 2-D initializers of real size (small pooling constants aside)."""
    return {
        i.name: numpy_helper.to_array(i) for i in proto.graph.initializer if len(i.dims) == 2 and np.prod(i.dims) > 1000
    }


def test_each_linear_weight_is_stored_once(mlp_head):
    _, path = mlp_head
    proto = onnx.load(str(path))
    weights = _weights(proto)
    # W2, W1, W0 folded with the pool's backward and the mean (one for both classes), W0
    assert sorted(w.size for w in weights.values()) == [10 * 128, 32 * 256, 256 * 128, 512 * 256]
    initializers = {i.name for i in proto.graph.initializer}
    assert not [n for n in proto.graph.node if n.op_type == "Transpose" and n.input[0] in initializers]


def test_onnx_runtime_folds_no_copy_at_load(mlp_head, tmp_path):
    """ORT's optimizer folds a Transpose of a weight into a new initializer: none is left to fold."""
    _, path = mlp_head
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    stored = sum(w.size for w in _weights(onnx.load(str(path))).values())
    loaded = sum(w.size for w in _weights(onnx.load(options.optimized_model_filepath)).values())
    assert loaded == stored


def test_onnx_runtime_prepacks_each_weight_at_most_once(mlp_head, tmp_path):
    """ORT's CPU products pre-pack a constant operand B per node and keep the weight while
    another node reads it: the forward alone reads an inner Linear's weight as B; the head's
    weight, whose rows the gradient gathers, is read as A by the forward too. The first
    Linear's weight is read by the forward only (its gradient reads the folded weight), so
    ORT holds it pre-packed alone."""
    _, path = mlp_head
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(options.optimized_model_filepath)
    weights = {w.size: name for name, w in _weights(optimized).items()}
    first, folded, inner, head = weights[512 * 256], weights[32 * 256], weights[256 * 128], weights[10 * 128]
    products = [n for n in optimized.graph.node if n.op_type in ("Gemm", "MatMul", "FusedGemm", "FusedMatMul")]
    as_b, as_a = [n.input[1] for n in products], [n.input[0] for n in products]
    assert (as_b.count(inner), as_a.count(inner)) == (1, 2)  # the forward; each explained class's gradient
    assert (as_b.count(head), as_a.count(head)) == (0, 1)
    assert (as_b.count(first), as_a.count(first)) == (1, 0)
    assert (as_b.count(folded), as_a.count(folded)) == (1, 1)
    gathers = [n for n in optimized.graph.node if n.op_type == "Gather" and n.input[0] == head]
    assert len(gathers) == 2  # the rows W[c] of the two explained classes


def test_the_rewritten_graph_keeps_parity(mlp_head):
    model, path = mlp_head
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    got = load_explainer(path)(images)
    want = reference_cam(model, "3", images, top_k=2, return_all=True)
    np.testing.assert_array_equal(got.class_index, want[2].numpy())
    np.testing.assert_allclose(got.cam, want[4].numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(got.logits, want[0].numpy(), rtol=1e-5, atol=1e-6)


def test_onnx_reference_evaluator_agrees_with_onnx_runtime(artifacts):
    """onnx's own reference evaluator (pure numpy, ships with onnx) runs the artifact too."""
    from onnx.reference import ReferenceEvaluator

    path = artifacts["dynamic.onnx"]  # resnet18 layer4 with a class input
    images = np.random.default_rng(4).standard_normal((2, 3, 64, 64)).astype(np.float32)
    classes = np.array([-1, 3], dtype=np.int64)
    names = ["logits", "probabilities", "class_index", "score", "cam"]
    feeds = {"image": images, "target_class": classes}
    got = dict(zip(names, ReferenceEvaluator(str(path)).run(None, feeds), strict=True))
    want = load_explainer(path)(images, classes)
    np.testing.assert_array_equal(got["class_index"], want.class_index)
    np.testing.assert_allclose(got["logits"], want.logits, rtol=1e-4, atol=1e-5)
    # at a last-stage layer the two runtimes agree to float32 rounding (measured 1.6e-5 with
    # OpenVINO too); at inner layers one ReLU-mask element within rounding of zero can flip
    np.testing.assert_allclose(got["cam"], want.cam, rtol=0, atol=1e-4)


def _shape_derived(graph) -> set[str]:
    """Names of the values computed from a ``Shape`` node (integer size arithmetic)."""
    derived: set[str] = set()
    for node in graph.node:  # nodes are topologically sorted
        if node.op_type == "Shape" or any(name in derived for name in node.input):
            derived.update(node.output)
    return derived


def test_no_float_tensor_is_computed_from_the_input_size(artifacts):
    """With a dynamic height and width, Grad-CAM's global-pool gradient divides by h * w. As a
    number computed from the shape, ONNX Runtime's CUDA provider computes it on the CPU and
    copies it in (a MemcpyFromHost node, seen on an H100 at resnet50 layer4); the count is
    summed on the device instead. The check: no size arithmetic turns into a float tensor."""
    graph = onnx.load(str(artifacts["dynamic.onnx"]), load_external_data=False).graph
    derived = _shape_derived(graph)
    assert "Shape" in {n.op_type for n in graph.node}  # the check has something to see
    floats = [
        n.name
        for n in graph.node
        if n.op_type == "Cast"
        and n.input[0] in derived
        and any(a.name == "to" and a.i in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE) for a in n.attribute)
    ]
    assert floats == []
