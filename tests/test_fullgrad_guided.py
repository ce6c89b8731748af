"""FullGrad, guided backpropagation and guided Grad-CAM in the graph against pytorch-grad-cam (the oracle).

pytorch-grad-cam's ``FullGrad`` and ``GuidedBackpropReLUModel`` run hooks and a live backward;
ours are traced graphs (the guided rule a backward of our own), exported and validated.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from oracle import oracle_fullgrad
from torch import nn
from zoo import build

import gradcam_model as gc
from gradcam_model.runtime import load_explainer

CAM_ATOL = 1e-4
SIZE = 64


def _images(seed: int, n: int = 3, size=(SIZE, SIZE)) -> torch.Tensor:
    return torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def resnet18():
    return build("resnet18", num_classes=5)


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


# BatchNorm only (resnet18), convolution biases only (vgg11), both and squeeze-excitation (mobilenet_v3_small)
@pytest.mark.parametrize("arch", ["resnet18", "vgg11", "mobilenet_v3_small"])
def test_fullgrad_equals_pytorch_grad_cam(arch, resnet18):
    model = resnet18 if arch == "resnet18" else build(arch, num_classes=5)
    images = _images(1)
    wrapper = gc.GradCAMModel(model, method="fullgrad", example_input=images[:1])
    assert wrapper.target_layer == ""
    logits, _, classes, _, cam = wrapper(images)
    assert torch.equal(classes[:, 0], model(images).argmax(1))
    oracle = oracle_fullgrad(model, images, classes[:, 0])
    assert float(np.ptp(oracle)) > 0.5  # maps with structure
    np.testing.assert_allclose(cam[:, 0].numpy(), oracle, rtol=0, atol=CAM_ATOL)
    reference = gc.reference_cam(model, "", images, method="fullgrad")
    np.testing.assert_allclose(reference[:, 0].numpy(), oracle, rtol=0, atol=CAM_ATOL)


def test_fullgrad_artifacts_validate_and_run_at_other_batches(resnet18, fullgrad_resnet18, tmp_path):
    onnx_path = gc.export_onnx(fullgrad_resnet18, tmp_path / "fullgrad.onnx")
    ts_path = gc.export_torchscript(fullgrad_resnet18, tmp_path / "fullgrad.pt")
    for path in (onnx_path, ts_path):
        report = gc.validate(path, resnet18, batch_sizes=(1, 3))
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
    with caplog.at_level(logging.WARNING, logger="gradcam_model.wrapper"):
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
    (dict(method="fullgrad+eigen-smooth"), "'fullgrad' takes no '\\+eigen-smooth'"),
]  # fmt: skip


@pytest.mark.parametrize(("kwargs", "message"), BAD)
def test_fullgrad_refusals(kwargs, message):
    kwargs = {"model": _small(), "method": "fullgrad", **kwargs}
    with pytest.raises(gc.MethodError, match=message):
        gc.GradCAMModel(kwargs.pop("model"), example_input=_images(0, 1), **kwargs)
