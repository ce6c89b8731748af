"""EigenCAM and EigenGradCAM in the graph against pytorch-grad-cam (an independent oracle).

pytorch-grad-cam computes the first principal component with LAPACK's SVD, whose sign is
arbitrary; ours is its ``get_2d_projection_with_sign_correction``. So the oracle is
pytorch-grad-cam's own EigenCAM/EigenGradCAM with that projection, and plain EigenCAM
must equal ours or the map of the negated projection.
"""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_grad_cam as pgc
import torch
import torchvision
from oracle import EIGEN_ORACLE
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection, get_2d_projection_with_sign_correction

import gradcam_model as gc
from gradcam_model.graph.methods import principal_projection
from gradcam_model.runtime import load_explainer

CAM_ATOL = 1e-4


class _Negated(pgc.EigenCAM):
    def get_cam_image(self, input_tensor, target_layer, target_category, activations, grads, eigen_smooth):
        return -get_2d_projection(activations)


ORACLE = EIGEN_ORACLE


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=5).eval()


def _images(seed: int, size=(96, 96)) -> torch.Tensor:
    return torch.randn(3, 3, *size, generator=torch.Generator().manual_seed(seed))


def _oracle(model, layer: str, images, classes, method: str, cls=None) -> np.ndarray:
    with (cls or ORACLE[method])(model, [dict(model.named_modules())[layer]]) as cam:
        return cam(images, targets=[ClassifierOutputTarget(int(c)) for c in classes])


# layer4 at 96 px: 3x3 positions, 512 channels (the spatial Gram matrix); layer2: 12x12 and 128 (the channel one)
@pytest.mark.parametrize("layer", ["layer4", "layer2", "layer3.0.conv1"])
@pytest.mark.parametrize("method", sorted(ORACLE))
def test_maps_equal_pytorch_grad_cam(model, layer, method):
    images = _images(1)
    wrapper = gc.GradCAMModel(model, layer, method=method, example_input=images[:1])
    logits, _, classes, _, cam = wrapper(images)
    np.testing.assert_allclose(logits.detach().numpy(), model(images).detach().numpy(), rtol=1e-5, atol=1e-5)
    oracle = _oracle(model, layer, images, classes[:, 0], method)
    assert float(np.ptp(oracle)) > 0.5  # maps with structure
    np.testing.assert_allclose(cam[:, 0].detach().numpy(), oracle, rtol=0, atol=CAM_ATOL)


def test_plain_eigencam_equals_ours_up_to_the_sign(model):
    images = _images(2)
    wrapper = gc.GradCAMModel(model, "layer4", method="eigencam", example_input=images[:1])
    ours = wrapper(images)[4][:, 0].detach().numpy()
    plain = _oracle(model, "layer4", images, [0, 0, 0], "eigencam", cls=pgc.EigenCAM)
    negated = _oracle(model, "layer4", images, [0, 0, 0], "eigencam", cls=_Negated)
    for i in range(len(images)):
        assert min(np.abs(ours[i] - plain[i]).max(), np.abs(ours[i] - negated[i]).max()) < CAM_ATOL


def test_the_projection_converges_where_the_leading_eigenvalues_are_close():
    """Two leading singular values 1% apart: 2**16 power iterations still separate them exactly."""
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.standard_normal((64, 64)))
    v, _ = np.linalg.qr(rng.standard_normal((32, 32)))
    s = np.concatenate([[1.0, 0.99], np.linspace(0.5, 0.01, 30)])
    x = (u[:, :32] * s) @ v.T  # [positions, channels]
    x = x - x.mean(0)
    activations = torch.from_numpy(x.T.reshape(1, 32, 8, 8).astype(np.float32))
    ours = principal_projection(activations)[0].numpy()
    expected = get_2d_projection_with_sign_correction(activations.numpy())[0]
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-4 * np.abs(expected).max())


def test_a_zero_map_stays_zero():
    assert torch.equal(principal_projection(torch.zeros(2, 8, 4, 4)), torch.zeros(2, 4, 4))


@pytest.mark.parametrize("method", sorted(ORACLE))
def test_onnx_and_torchscript_artifacts_validate(model, method, tmp_path):
    images = _images(3, (96, 112))
    wrapper = gc.GradCAMModel(model, "layer4", method=method, example_input=images[:1])
    assert wrapper.dynamic_spatial  # the Gram side is chosen at the example size; any size stays exact
    onnx_path = gc.export_onnx(wrapper, tmp_path / f"{method}.onnx")
    ts_path = gc.export_torchscript(wrapper, tmp_path / f"{method}.pt")
    for path, runtime in ((onnx_path, "onnxruntime"), (onnx_path, "openvino"), (ts_path, None)):
        report = gc.validate(path, model, **({"runtime": runtime} if runtime else {}))
        assert report.ok, (runtime, report)
    explainer = load_explainer(onnx_path)
    bigger = torch.nn.functional.interpolate(images, size=(160, 128), mode="bilinear")  # 5x4 positions
    for batch in (images, bigger):
        result = explainer(batch.numpy())
        oracle = _oracle(model, "layer4", batch, result.class_index[:, 0], method)
        np.testing.assert_allclose(result.cam[:, 0], oracle, rtol=0, atol=CAM_ATOL)


SMOOTHED = {
    "gradcam": pgc.GradCAM, "gradcam++": pgc.GradCAMPlusPlus, "xgradcam": pgc.XGradCAM, "hirescam": pgc.HiResCAM,
    "layercam": pgc.LayerCAM, "gradcam-elementwise": pgc.GradCAMElementWise,
}  # fmt: skip


@pytest.mark.parametrize("method", sorted(SMOOTHED))
def test_eigen_smooth_equals_pytorch_grad_cams(model, method, monkeypatch):
    """``METHOD+eigen-smooth`` is pytorch-grad-cam's ``eigen_smooth=True``, with the sign-corrected projection."""
    images = _images(4)
    wrapper = gc.GradCAMModel(model, "layer3", method=f"{method}+eigen-smooth", example_input=images[:1])
    assert wrapper.method == f"{method}+eigen-smooth"
    _, _, classes, _, cam = wrapper(images)
    targets = [ClassifierOutputTarget(int(c)) for c in classes[:, 0]]
    module = __import__(SMOOTHED[method].__module__, fromlist=["get_2d_projection"])
    for where in {pgc.base_cam, module}:  # where each class looks the projection up
        monkeypatch.setattr(where, "get_2d_projection", get_2d_projection_with_sign_correction, raising=False)
    with SMOOTHED[method](model, [model.layer3]) as oracle:
        expected = oracle(images, targets=targets, eigen_smooth=True)
    assert float(np.ptp(expected)) > 0.5
    np.testing.assert_allclose(cam[:, 0].detach().numpy(), expected, rtol=0, atol=CAM_ATOL)


def test_eigen_smooth_is_refused_where_it_means_nothing():
    with pytest.raises(gc.MethodError, match="'eigencam' takes no '\\+eigen-smooth'"):
        gc.GradCAMModel(torchvision.models.resnet18(num_classes=5).eval(), "layer4", method="eigencam+eigen-smooth",
                        example_input=torch.randn(1, 3, 64, 64))  # fmt: skip
