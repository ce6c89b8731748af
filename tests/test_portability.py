"""The portability matrix: one exported file, the same classes and maps under every runtime we name.

Each artifact runs under ONNX Runtime's CPU provider, ``onnx.reference`` (the ONNX
specification in numpy) and OpenVINO's CPU plugin with the f32 precision hint, and each is
held to ``validate``'s limits against the eager reference (mask flips diagnosed as for any
runtime). Every method runs on resnet18 at an inner layer (the methods differ only in the
CAM maths after the gradient, which every model shares), CAM at its last stage; the other
families (MobileNetV3 with hardswish/hardsigmoid, VGG with max-pool backward, a timm
EfficientNet with SiLU and squeeze-excitation, a 4-block ViT) run Grad-CAM at an inner
layer and at their last stage (see :func:`_cases`).
Small inputs: onnx.reference runs convolutions in numpy.
"""

from __future__ import annotations

import functools

import onnx
import pytest
import torch

from gradcam_model import GradCAMModel, export_onnx
from gradcam_model.checks.calibration import calibrate, random_model
from gradcam_model.checks.parity import validate_each
from gradcam_model.checks.runtimes import RuntimeUnavailableError, load_under

pytest.importorskip("openvino")  # a [dev] dependency ([openvino] extra): installed by scripts/setup.sh
timm = pytest.importorskip("timm")

pytestmark = [pytest.mark.xdist_group("portability")]  # one worker builds each model once

RUNTIMES = ("onnxruntime:cpu", "onnx-reference", "openvino:CPU")
GRADIENT_METHODS = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "gradcam-elementwise")

# architecture: (input size, last-stage layer, inner layer). resnet18 at 64 px, not 32: its
# layer4 map is then 2x2, not 1x1 (a 1x1 gradcam++ map failed validate under every runtime).
FAMILIES = {
    "resnet18": (64, "layer4", "layer3"),
    "mobilenet_v3_small": (64, "features", "features.9"),
    "vgg11": (64, "features", "features.10"),
    "timm:efficientnet_b0": (32, "bn2", "blocks.4"),
    "timm:vit_tiny_patch16_224": (32, "blocks.3.norm1", "blocks.1.norm1"),
}


def _cases():
    """Every method at resnet18's inner layer, CAM and Grad-CAM at its last stage, and every other
    family at its last stage and at its inner layer (where ReLU-family masks after the layer are in
    the gradient: the kind of layer a runtime got wrong)."""
    yield "resnet18", "layer4", "cam"
    yield "resnet18", "layer4", "gradcam"
    for method in GRADIENT_METHODS:
        yield "resnet18", "layer3", method
    for arch, (_, last, inner) in FAMILIES.items():
        if arch != "resnet18":
            yield arch, last, "gradcam"
            yield arch, inner, "gradcam"


@functools.cache
def _model(arch: str) -> torch.nn.Module:
    size = FAMILIES[arch][0]
    if arch == "timm:vit_tiny_patch16_224":  # 4 blocks at 32 px (a 2x2 patch grid): onnx.reference is slow
        torch.manual_seed(0)
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=size, depth=4)
        return calibrate(model, size)
    return random_model(arch, size=size, num_classes=10)


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
    model, size = _model(arch), FAMILIES[arch][0]
    example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    wrapper = GradCAMModel(model, layer, method=method, example_input=example, architecture=arch)
    path = export_onnx(wrapper, out / f"{arch.replace(':', '_')}-{layer}-{method}.onnx")
    _hardsigmoids_read_the_same_everywhere(path)
    runtimes = list(RUNTIMES)
    if arch == "vgg11" and layer != "features":  # the max-pool backward: see the next test
        runtimes.remove("onnx-reference")
    reports = validate_each([load_under(path, r) for r in runtimes], model, batch_sizes=(3,))
    for runtime, report in zip(runtimes, reports, strict=True):
        assert report.runtime["name"] == runtime.split(":")[0]
        assert report.ok, (runtime, report.table())
        assert report.class_agreement == 1.0, (runtime, report.table())
        cam = report.outputs["cam"]
        print(f"{arch} {layer} {method} {runtime}: max |cam - eager| {cam.max_abs:.3g} ({cam.verdict})")
    assert max(r.structured_maps for r in reports) > 0  # maps with structure, or equal maps prove nothing


def test_onnx_reference_refuses_a_max_pool_gradient_clearly(out):
    """onnx.reference computes a 1x1 MaxPool's indices per plane (the spec: over the tensor)."""
    path = out / "vgg11-features.10-gradcam.onnx"
    if not path.exists():
        model = _model("vgg11")
        example = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        export_onnx(GradCAMModel(model, "features.10", example_input=example), path)
    with pytest.raises(RuntimeUnavailableError, match=r"onnx-reference cannot run .*1x1 MaxPool's indices"):
        load_under(path, "onnx-reference")
