"""The portability matrix: one exported file, the same classes and maps under every runtime we name.

Each artifact runs under ONNX Runtime's CPU provider, ``onnx.reference`` (the ONNX
specification in numpy) and OpenVINO's CPU plugin with the f32 precision hint, and each is
held to ``validate``'s limits against the eager reference (mask flips diagnosed as for any
runtime). Every method runs on resnet18 at a last-stage and an inner layer (the methods
differ only in the CAM maths after the gradient, which every model shares); the other
families (MobileNetV3 with hardswish/hardsigmoid, VGG with max-pool backward, a timm
EfficientNet with SiLU and squeeze-excitation, a ViT) run Grad-CAM at both layers.
32-pixel inputs: onnx.reference runs convolutions in numpy.
"""

from __future__ import annotations

import functools

import onnx
import pytest
import torch

from gradcam_model import GradCAMModel, export_onnx
from gradcam_model.calibration import calibrate, random_model
from gradcam_model.parity import validate_each
from gradcam_model.runtimes import load_under

pytest.importorskip("openvino")  # a [dev] dependency ([openvino] extra): installed by scripts/setup.sh
timm = pytest.importorskip("timm")

pytestmark = [pytest.mark.xdist_group("portability")]  # one worker builds each model once

RUNTIMES = ("onnxruntime:cpu", "onnx-reference", "openvino:CPU")
SIZE = 32
ALL_METHODS = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "gradcam-elementwise")

# (architecture, last-stage layer, inner layer)
FAMILIES = {
    "resnet18": ("layer4", "layer3"),
    "mobilenet_v3_small": ("features", "features.9"),
    "vgg11": ("features", "features.10"),
    "timm:efficientnet_b0": ("bn2", "blocks.4"),
    "timm:vit_tiny_patch16_224": ("blocks.11.norm1", "blocks.5.norm1"),
}


def _cases():
    for method in (*ALL_METHODS, "cam"):
        yield "resnet18", "layer4", method
    for method in ALL_METHODS:
        yield "resnet18", "layer3", method
    for arch, layers in FAMILIES.items():
        if arch != "resnet18":
            for layer in layers:
                yield arch, layer, "gradcam"


@functools.cache
def _model(arch: str) -> torch.nn.Module:
    if arch == "timm:vit_tiny_patch16_224":  # 32 px: a 2x2 patch grid, like a 224 px model's 14x14 in kind
        torch.manual_seed(0)
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=SIZE)
        return calibrate(model, SIZE)
    return random_model(arch, size=SIZE, num_classes=10)


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("portability")


def _hardsigmoids_read_the_same_everywhere(path) -> None:
    """No HardSigmoid with a zero (OpenVINO: read as the default) or overflowing coefficient."""
    for node in onnx.load(str(path)).graph.node:
        if node.op_type == "HardSigmoid":
            attrs = {a.name: a.f for a in node.attribute}
            assert set(attrs) == {"alpha", "beta"} and all(attrs.values()), (node.name, attrs)
            assert abs(attrs["alpha"]) < 2.0**127, (node.name, attrs)


@pytest.mark.parametrize("arch, layer, method", list(_cases()), ids=lambda v: str(v))
def test_every_runtime_gives_the_same_classes_and_maps(out, arch, layer, method):
    model = _model(arch)
    example = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    wrapper = GradCAMModel(model, layer, method, example_input=example, architecture=arch)
    path = export_onnx(wrapper, out / f"{arch.replace(':', '_')}-{layer}-{method}.onnx")
    _hardsigmoids_read_the_same_everywhere(path)
    explainers = [load_under(path, runtime) for runtime in RUNTIMES]
    reports = validate_each(explainers, model, batch_sizes=(3,))
    for runtime, report in zip(RUNTIMES, reports, strict=True):
        assert report.runtime["name"] == runtime.split(":")[0]
        assert report.ok, (runtime, report.table())
        assert report.class_agreement == 1.0, (runtime, report.table())
    assert max(r.structured_maps for r in reports) > 0  # maps with structure, or equal maps prove nothing
