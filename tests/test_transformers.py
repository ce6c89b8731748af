"""Vision transformers: token and channels-last layers explained inside the graph.

Each model is checked against pytorch-grad-cam with the ``reshape_transform`` its
documentation gives for that architecture (the independent oracle), against our
eager reference, and through exported ONNX and TorchScript artifacts validated at
other batch sizes than the export example's.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torchvision
from pytorch_grad_cam import GradCAM
from zoo import calibrate

from gradcam_model import GradCAMModel, export_onnx, export_torchscript, list_layers, reference_cam, validate

timm = pytest.importorskip("timm")  # a [dev] dependency: installed by scripts/setup.sh

pytestmark = pytest.mark.xdist_group("transformers")  # one worker builds each model once


@dataclass(frozen=True)
class Case:
    arch: str  # as `gradcam --arch` takes it
    layer: str  # what target_layer="auto" picks
    size: int
    layout: str
    prefix: int = 0
    kwargs: tuple = ()  # timm.create_model options for a small input


TRANSFORMERS = (
    Case("timm:vit_tiny_patch16_224", "blocks.11.norm1", 64, "tokens", 1, (("img_size", 64),)),
    Case("timm:deit_tiny_distilled_patch16_224", "blocks.11.norm1", 64, "tokens", 2, (("img_size", 64),)),
    Case("timm:swin_tiny_patch4_window7_224", "norm", 64, "NHWC", 0, (("img_size", 64), ("window_size", 4))),
    Case("swin_t", "features", 64, "NHWC"),  # torchvision: channels-last stages; auto picks the NCHW `permute`
)
CASES = {c.arch: c for c in TRANSFORMERS}


def _build(case: Case) -> torch.nn.Module:
    torch.manual_seed(0)
    if case.arch.startswith("timm:"):
        model = timm.create_model(case.arch[5:], pretrained=False, num_classes=10, **dict(case.kwargs))
    else:
        model = torchvision.models.get_model(case.arch, weights=None, num_classes=10)
    return calibrate(model, case.size)  # normal-scale Linear layers: maps with signal


def _oracle_reshape(case: Case):
    """The reshape_transform pytorch-grad-cam's documentation writes for ViT and Swin."""
    if case.layout == "NHWC":
        return lambda t: t.transpose(2, 3).transpose(1, 2)
    grid = case.size // 16

    def vit(t):
        result = t[:, case.prefix :, :].reshape(t.size(0), grid, grid, t.size(2))
        return result.transpose(2, 3).transpose(1, 2)

    return vit


@pytest.fixture(scope="module")
def built():
    cache = {}

    def get(arch: str):
        if arch not in cache:
            case = CASES[arch]
            model = _build(case)
            example = torch.randn(2, 3, case.size, case.size, generator=torch.Generator().manual_seed(1))
            wrapper = GradCAMModel(model, case.layer, example_input=example, architecture=arch)
            cache[arch] = (case, model, wrapper)
        return cache[arch]

    return get


@pytest.mark.parametrize("arch", list(CASES))
def test_maps_match_pytorch_grad_cam_with_its_reshape_transform(built, arch):
    case, model, wrapper = built(arch)
    assert wrapper.layout == case.layout and wrapper.target_layer == case.layer
    images = torch.randn(3, 3, case.size, case.size, generator=torch.Generator().manual_seed(2))
    logits, _, classes, _, cam = wrapper(images)
    oracle_model = copy.deepcopy(model)
    oracle = GradCAM(
        model=oracle_model,
        target_layers=[dict(oracle_model.named_modules())[case.layer]],
        reshape_transform=_oracle_reshape(case),
    )
    try:
        want = oracle(input_tensor=images, targets=None)  # top class, normalized, input size
    finally:
        oracle.activations_and_grads.release()
    assert torch.equal(classes[:, 0], logits.argmax(1))
    raw = reference_cam(model, case.layer, images, normalize=False)
    assert float(raw.amax()) > 1e-4, "random model with faint maps: the comparison would prove nothing"
    assert all(float(m.max() - m.min()) > 0.5 for m in cam[:, 0])  # structured maps, not flat
    np.testing.assert_allclose(cam[:, 0].numpy(), want, rtol=0, atol=1e-4)
    torch.testing.assert_close(cam, reference_cam(model, case.layer, images), rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", list(CASES))
def test_auto_choice_and_layouts(built, arch):
    case, model, _ = built(arch)
    layers = {info.name: info for info in list_layers(model, torch.randn(1, 3, case.size, case.size))}
    chosen = layers[case.layer]
    assert chosen.layout.kind == case.layout and chosen.layout.prefix == case.prefix and chosen.problem is None
    auto = [name for name, info in layers.items() if info.auto]
    assert auto == (["permute"] if arch == "swin_t" else [case.layer])


def test_a_custom_reshape_gives_the_same_maps(built):
    case, model, wrapper = built("timm:vit_tiny_patch16_224")
    custom = GradCAMModel(
        model,
        case.layer,
        example_input=torch.randn(2, 3, case.size, case.size),
        reshape=_oracle_reshape(case),  # pytorch-grad-cam style: a callable on activations and gradients
    )
    images = torch.randn(2, 3, case.size, case.size)
    assert custom.layout == "custom"
    torch.testing.assert_close(custom(images)[4], wrapper(images)[4], rtol=0, atol=1e-6)


@pytest.mark.parametrize("arch", ["timm:vit_tiny_patch16_224", "timm:swin_tiny_patch4_window7_224"])
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_artifacts_validate(built, tmp_path, arch, fmt):
    case, model, wrapper = built(arch)
    assert wrapper.input_size == (case.size, case.size)  # transformers are traced at a fixed size
    path = tmp_path / f"model.{'onnx' if fmt == 'onnx' else 'pt'}"
    (export_onnx if fmt == "onnx" else export_torchscript)(wrapper, path)
    report = validate(path, model, batch_sizes=(1, 3))
    assert report.ok, report.failures()
    assert report.class_agreement == 1.0
    # validate's random inputs can give a map that ReLU leaves all zero (a flat map, compared
    # exactly); most must have structure, or equal maps would prove nothing
    assert report.structured_maps >= 0.5


def test_zero_patch_gradient_layer_is_refused(built):
    case, model, _ = built("timm:deit_tiny_distilled_patch16_224")
    with pytest.raises(Exception, match="its patch tokens do not reach the logits"):
        GradCAMModel(model, "blocks.11.mlp", example_input=torch.randn(2, 3, case.size, case.size))
