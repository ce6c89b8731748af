"""FullGrad, guided backpropagation and guided Grad-CAM in the graph against pytorch-grad-cam (the oracle).

pytorch-grad-cam's ``FullGrad`` and ``GuidedBackpropReLUModel`` run hooks and a live backward;
ours are traced graphs (the guided rule a backward of our own), exported and validated.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from oracle import oracle_cam, oracle_fullgrad, oracle_guided_backprop
from torch import nn
from zoo import build

import gradcam_model as gc
from gradcam_model.contract import GUIDED_METHODS, GUIDED_OUTPUT, OUTPUT_NAMES, output_names
from gradcam_model.graph.methods import METHODS
from gradcam_model.runtime import load_explainer

CAM_ATOL = 1e-4
SIZE = 64


def _images(seed: int, n: int = 3, size=(SIZE, SIZE)) -> torch.Tensor:
    return torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def resnet18():
    return build("resnet18", num_classes=5)


@pytest.fixture(scope="module")
def vgg11():
    return build("vgg11", num_classes=5)


@pytest.fixture(scope="module")
def fullgrad_resnet18(resnet18):
    return gc.GradCAMModel(resnet18, method="fullgrad", example_input=_images(0, 1))


def _small(bias: bool = True, track: bool = True, relu: type[nn.Module] = nn.ReLU) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=bias), nn.BatchNorm2d(8, affine=bias, track_running_stats=track), relu(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=bias), relu(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()  # fmt: skip


# BatchNorm only (resnet18), convolution biases only (vgg11): in the graph; both, and squeeze-excitation
# convolutions on 1x1 maps (mobilenet_v3_small): the eager reference, which the graph is traced from
@pytest.mark.parametrize("arch", ["resnet18", "vgg11", "mobilenet_v3_small"])
def test_fullgrad_equals_pytorch_grad_cam(arch, request):
    model = request.getfixturevalue(arch) if arch != "mobilenet_v3_small" else build(arch, num_classes=5)
    images = _images(1)
    if arch == "resnet18":
        outputs = request.getfixturevalue("fullgrad_resnet18")(images)
    elif arch == "vgg11":
        outputs = gc.GradCAMModel(model, "anything", method="fullgrad", example_input=images[:1])(images)
    else:
        outputs = gc.reference_cam(model, "", images, method="fullgrad", return_all=True)
    _, _, classes, _, cam = outputs
    assert torch.equal(classes[:, 0], model(images).argmax(1))
    oracle = oracle_fullgrad(model, images, classes[:, 0])
    assert float(np.ptp(oracle)) > 0.5  # maps with structure
    np.testing.assert_allclose(cam[:, 0].numpy(), oracle, rtol=0, atol=CAM_ATOL)


def test_fullgrad_artifacts_validate_and_run_at_other_batches(resnet18, fullgrad_resnet18, tmp_path):
    onnx_path = gc.export_onnx(fullgrad_resnet18, tmp_path / "fullgrad.onnx")
    ts_path = gc.export_torchscript(fullgrad_resnet18, tmp_path / "fullgrad.pt")
    for path in (onnx_path, ts_path):
        report = gc.validate(path, resnet18, batch_sizes=(3,))
        assert report.ok, report.table()
        explainer = load_explainer(path)
        assert explainer.metadata.method == "fullgrad" and explainer.metadata.target_layer == ""
        images = _images(5, n=4)
        result = explainer(images.numpy())
        oracle = oracle_fullgrad(resnet18, images, result.class_index[:, 0])
        np.testing.assert_allclose(result.cam[:, 0], oracle, rtol=0, atol=CAM_ATOL)


def test_fullgrad_top_k_explains_each_class():
    model, images = _small(), _images(2, n=2)
    wrapper = gc.GradCAMModel(model, method="fullgrad", example_input=images[:1], top_k=2)
    _, _, classes, _, cam = wrapper(images)
    assert float(cam.amax() - cam.amin()) > 0.5
    for k in range(2):
        np.testing.assert_allclose(cam[:, k].numpy(), oracle_fullgrad(model, images, classes[:, k]), atol=CAM_ATOL)


def test_fullgrad_ignores_the_target_layer(caplog):
    model, images = _small(), _images(3)
    with caplog.at_level(logging.WARNING, logger="gradcam_model.graph.wrapper"):
        named = gc.GradCAMModel(model, "3", method="fullgrad", example_input=images[:1])
    assert "method 'fullgrad' reads no target layer: '3' is ignored" in caplog.text
    assert named.target_layer == ""
    assert torch.equal(named(images)[4], gc.GradCAMModel(model, method="fullgrad", example_input=images[:1])(images)[4])


def test_the_callers_model_is_left_as_it_was():
    model = _small()
    model.train()
    hooks = {n: (len(m._forward_hooks), m.training) for n, m in model.named_modules()}
    gc.GradCAMModel(model, method="fullgrad", example_input=_images(4, 1))
    assert hooks == {n: (len(m._forward_hooks), m.training) for n, m in model.named_modules()}
    assert all(p.requires_grad for p in model.parameters())


BAD = [
    (dict(model=_small(bias=False)), "method 'fullgrad' needs Conv2d or BatchNorm2d layers with a bias, and this "
     "model has none"),
    (dict(model=_small(track=False)), "needs BatchNorm running statistics for the effective bias, and '1' has none"),
    (dict(upsample=False), "method 'fullgrad' gives maps at input resolution; it takes no upsample=False"),
    (dict(method="fullgrad+eigen-smooth", example_input=_images(0, 1, size=(7, 12))), "method "
     "'fullgrad\\+eigen-smooth' projects its terms at 1/8 of the input size; 7x12 is too small"),
]  # fmt: skip


@pytest.mark.parametrize(("kwargs", "message"), BAD)
def test_fullgrad_refusals(kwargs, message):
    kwargs = {"model": _small(), "method": "fullgrad", "example_input": _images(0, 1), **kwargs}
    with pytest.raises(gc.MethodError, match=message):
        gc.GradCAMModel(kwargs.pop("model"), **kwargs)


# ---- FullGrad's smoothings: pytorch-grad-cam's eigen_smooth and aug_smooth ----


SMOOTH = {
    "fullgrad+eigen-smooth": dict(eigen_smooth=True),
    "fullgrad+aug-smooth": dict(aug_smooth=True),
    "fullgrad+eigen-smooth+aug-smooth": dict(eigen_smooth=True, aug_smooth=True),
}


# the eager reference (the graph's own code) on three architectures; the graph on resnet18. Without
# targets each of pytorch-grad-cam's 6 augmented passes explains its own top class, as ours do; its
# aug_smooth mean is not rescaled (ours is, as the contract says), so it is compared normalized.
@pytest.mark.parametrize(
    ("arch", "method"),
    [("resnet18", "fullgrad+eigen-smooth"), ("vgg11", "fullgrad+eigen-smooth"),
     ("mobilenet_v3_small", "fullgrad+eigen-smooth"), ("vgg11", "fullgrad+aug-smooth"),
     ("small", "fullgrad+eigen-smooth+aug-smooth")],
)  # fmt: skip
def test_fullgrad_smoothings_equal_pytorch_grad_cam(arch, method, request):
    model = {"small": _small, "mobilenet_v3_small": lambda: build(arch, num_classes=5)}.get(arch)
    model = model() if model else request.getfixturevalue(arch)
    images = _images(9, n=2)
    if arch == "resnet18":
        outputs = gc.GradCAMModel(model, method=method, example_input=images[:1])(images)
    else:
        outputs = gc.reference_cam(model, "", images, method=method, return_all=True)
    _, _, classes, _, cam = outputs
    assert torch.equal(classes[:, 0], model(images).argmax(1))  # the image's own pass
    oracle = oracle_fullgrad(model, images, None, **SMOOTH[method])
    assert float(np.ptp(oracle)) > 0.5  # maps with structure
    np.testing.assert_allclose(cam[:, 0].numpy(), _normalized(oracle), rtol=0, atol=CAM_ATOL)
    plain = gc.reference_cam(model, "", images, method="fullgrad")
    assert float((plain - cam).abs().amax()) > 0.05  # the smoothing changes the map


def test_fullgrad_eigen_smooth_is_pytorch_grad_cams_up_to_the_sign(resnet18):
    """With LAPACK's sign, pytorch-grad-cam's map is ours or ``1 - ours`` (its last step is a min-max scale)."""
    images = _images(10)
    ours = gc.reference_cam(resnet18, "", images, method="fullgrad+eigen-smooth")[:, 0].numpy()
    plain = oracle_fullgrad(resnet18, images, None, sign_corrected=False, eigen_smooth=True)
    for i in range(len(images)):
        assert min(np.abs(ours[i] - plain[i]).max(), np.abs(ours[i] - (1 - plain[i])).max()) < CAM_ATOL


@pytest.mark.parametrize("method", ["fullgrad+eigen-smooth", "fullgrad+aug-smooth"])
def test_fullgrad_smoothed_artifacts_validate(method, tmp_path):
    """ONNX artifacts with a class input, validated at other batches; a given class is explained in every pass."""
    model = _small()
    wrapper = gc.GradCAMModel(model, method=method, example_input=_images(0, 1), class_input=True)
    path = gc.export_onnx(wrapper, tmp_path / "fullgrad.onnx")
    report = gc.validate(path, model, batch_sizes=(1, 3))
    assert report.ok, report.table()
    images, given = _images(11, n=4), np.array([3, -1, 0, 1])
    result = load_explainer(path)(images.numpy(), class_index=given)
    assert load_explainer(path).metadata.method == method
    top = model(images).argmax(1).numpy()
    assert (result.class_index[:, 0] == np.where(given < 0, top, given)).all()
    oracle = oracle_fullgrad(model, images, result.class_index[:, 0], **SMOOTH[method])
    np.testing.assert_allclose(result.cam[:, 0], _normalized(oracle), rtol=0, atol=CAM_ATOL)


# ---- guided backpropagation and guided Grad-CAM ----


def _normalized(maps: np.ndarray) -> np.ndarray:
    lo = maps.min(axis=(-2, -1), keepdims=True)
    return (maps - lo) / (maps.max(axis=(-2, -1), keepdims=True) - lo)


def _assert_guided(got: np.ndarray, want: np.ndarray) -> None:
    """Guided images are raw gradients: held to 1e-4 of their largest magnitude (validate's guided_rtol)."""
    assert float(np.abs(want).max()) > 0
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * float(np.abs(want).max()))


@pytest.mark.parametrize(("arch", "layer"), [("resnet18", "layer3"), ("vgg11", "features.15")])
def test_guided_methods_equal_pytorch_grad_cam(arch, layer, request):
    model, images = request.getfixturevalue(arch), _images(6)
    backprop = gc.GradCAMModel(model, method="guided-backprop", example_input=images[:1])
    outputs = backprop(images)
    assert len(outputs) == 6 and outputs[5].shape == (3, 1, 3, SIZE, SIZE)
    classes = outputs[2][:, 0]
    assert torch.equal(classes, model(images).argmax(1))
    gb = oracle_guided_backprop(model, images, classes)
    _assert_guided(outputs[5][:, 0].numpy(), gb)
    saliency = _normalized(np.abs(gb).max(axis=1))  # the cam output: max_c |guided_c|, normalized
    np.testing.assert_allclose(outputs[4][:, 0].numpy(), saliency, rtol=0, atol=CAM_ATOL)

    wrapper = gc.GradCAMModel(model, layer, method="guided-gradcam", example_input=images[:1])
    _, _, classes, _, cam, guided = wrapper(images)
    gradcam = oracle_cam(model, layer, images, classes[:, 0], "gradcam")
    assert float(np.ptp(gradcam)) > 0.5
    np.testing.assert_allclose(cam[:, 0].numpy(), gradcam, rtol=0, atol=CAM_ATOL)
    _assert_guided(guided[:, 0].numpy(), gradcam[:, None] * oracle_guided_backprop(model, images, classes[:, 0]))


def test_guided_gradcam_artifacts_validate_and_carry_the_guided_output(resnet18, tmp_path):
    images = _images(7, n=4)
    wrapper = gc.GradCAMModel(resnet18, "layer4", method="guided-gradcam", example_input=images[:1], top_k=2)
    onnx_path = gc.export_onnx(wrapper, tmp_path / "guided.onnx")
    ts_path = gc.export_torchscript(wrapper, tmp_path / "guided.pt")
    for path in (onnx_path, ts_path):
        report = gc.validate(path, resnet18, batch_sizes=(3,))
        assert report.ok, report.table()
        assert report.outputs[GUIDED_OUTPUT].max_rel <= 1e-4
        result = load_explainer(path)(images.numpy())
        assert result.guided.shape == (4, 2, 3, SIZE, SIZE) and len(result.outputs()) == 6
        for k in range(2):
            gradcam = oracle_cam(resnet18, "layer4", images, result.class_index[:, k], "gradcam")
            np.testing.assert_allclose(result.cam[:, k], gradcam, rtol=0, atol=CAM_ATOL)
            gb = oracle_guided_backprop(resnet18, images, result.class_index[:, k])
            _assert_guided(result.guided[:, k], gradcam[:, None] * gb)


def test_the_contract_names_the_guided_output():
    assert output_names("gradcam") == OUTPUT_NAMES == ("logits", "probabilities", "class_index", "score", "cam")
    assert output_names("fullgrad") == OUTPUT_NAMES
    assert output_names("guided-backprop") == (*OUTPUT_NAMES, "guided")
    assert set(GUIDED_METHODS) == {name for name, cls in METHODS.items() if getattr(cls, "guided", False)}


def test_the_guided_gates_leave_the_model_as_it_was():
    model = _small()
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    gc.GradCAMModel(model, "3", method="guided-gradcam", example_input=_images(4, 1))
    assert [m for m in model.modules() if isinstance(m, nn.ReLU)] == relus
    assert all(not m._forward_hooks for m in model.modules())


GUIDED_BAD = [
    (dict(model=_small(relu=nn.GELU)), "method 'guided-backprop' applies the guided rule to nn.ReLU modules, and "
     "this model has none"),
    (dict(model=_small(relu=nn.GELU), method="guided-gradcam", target_layer="3"), "method 'guided-gradcam' applies"),
    (dict(upsample=False), "method 'guided-backprop' gives maps at input resolution; it takes no upsample=False"),
    (dict(method="guided-gradcam+eigen-smooth"), "'guided-gradcam' takes no '\\+eigen-smooth'"),
    (dict(method="guided-backprop+aug-smooth"), "'guided-backprop' takes no '\\+aug-smooth': pytorch-grad-cam's "
     "GuidedBackpropReLUModel has no aug_smooth"),
]  # fmt: skip


@pytest.mark.parametrize(("kwargs", "message"), GUIDED_BAD)
def test_guided_refusals(kwargs, message):
    kwargs = {"model": _small(), "method": "guided-backprop", **kwargs}
    with pytest.raises(gc.MethodError, match=message):
        gc.GradCAMModel(kwargs.pop("model"), kwargs.pop("target_layer", "auto"), example_input=_images(0, 1), **kwargs)


class _Reused(nn.Module):
    """One convolution run twice: which of its outputs a bias x gradient term means is ambiguous."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(torch.relu(self.conv(torch.relu(self.conv(x)))).mean((2, 3)))


def test_fullgrad_refuses_a_bias_layer_that_runs_twice():
    with pytest.raises(gc.LayerError, match="layer 'conv' ran 2 times in one forward pass; method 'fullgrad' needs"):
        gc.GradCAMModel(_Reused().eval(), method="fullgrad", example_input=_images(0, 1))


def test_guided_backprop_artifact_validates(tmp_path):
    """The guided gates lower to plain ONNX operators; validated at other batches and values."""
    model = _small()
    wrapper = gc.GradCAMModel(model, method="guided-backprop", example_input=_images(0, 1))
    path = gc.export_onnx(wrapper, tmp_path / "gb.onnx")
    report = gc.validate(path, model, batch_sizes=(1, 3))
    assert report.ok and GUIDED_OUTPUT in report.outputs, report.table()
    images = _images(8)
    result = load_explainer(path)(images.numpy())
    _assert_guided(result.guided[:, 0], oracle_guided_backprop(model, images, result.class_index[:, 0]))
