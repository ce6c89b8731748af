"""Shared fixtures: seeded small models and a cache of built wrappers (building is the slow part)."""

from __future__ import annotations

import functools
import os
import sys

# Before torch loads libgomp: idle OpenMP workers sleep instead of spinning. The
# suite runs explainers from 8 threads and ORT beside torch on 2 cores; spinning
# workers made each TorchScript call take ~0.9 s of CPU instead of ~15 ms there.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from zoo import CASES, build  # noqa: E402

from gradcam_model import GradCAMModel  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "zoo: parametrized over the whole torchvision zoo (slow)")


@functools.cache
def zoo_model(arch: str) -> torch.nn.Module:
    return build(arch)


# The variant each zoo layer is built with, so that across the zoo every combination
# the export contract knows is exercised: the last stage explains the top 3 classes
# with Grad-CAM, the inner stage a given class (class input) with Grad-CAM++.
VARIANTS = {
    "last": {"method": "gradcam", "top_k": 3},
    "inner": {"method": "gradcam++", "class_input": True},
}


@functools.cache
def zoo_wrapper(arch: str, which: str) -> GradCAMModel:
    case = CASES[arch]
    layer = case.last if which == "last" else case.inner
    example = torch.randn(1, 3, case.size, case.size, generator=torch.Generator().manual_seed(7))
    return GradCAMModel(zoo_model(arch), layer, example_input=example, architecture=arch, **VARIANTS[which])


def zoo_params():
    return [
        # one xdist group per architecture: its wrappers are built once per worker
        pytest.param(arch, which, id=f"{arch}-{which}", marks=[pytest.mark.zoo, pytest.mark.xdist_group(arch)])
        for arch in CASES
        for which in ("last", "inner")
    ]


def zoo_images(arch: str, batch: int, seed: int = 1, size: tuple[int, int] | None = None) -> torch.Tensor:
    s = CASES[arch].size
    h, w = size or (s, s)
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="session")
def resnet18():
    return zoo_model("resnet18")


@pytest.fixture(scope="session")
def resnet18_layer4(resnet18):
    """resnet18 at layer4, Grad-CAM top-1: the cheapest global-pool case (dynamic H, W)."""
    return GradCAMModel(resnet18, "layer4", example_input=torch.randn(1, 3, 64, 64))


@pytest.fixture(scope="session")
def resnet18_layer2(resnet18):
    """resnet18 at layer2: the gradient crosses strided convolutions (static H, W)."""
    return GradCAMModel(resnet18, "layer2", example_input=torch.randn(1, 3, 64, 64))


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory, resnet18):
    """Exported resnet18 artifacts, both formats: layer4 with a class input (dynamic H, W)
    and layer2 top-1 (static 64x64)."""
    from gradcam_model import export_onnx, export_torchscript

    out = tmp_path_factory.mktemp("artifacts")
    dynamic = GradCAMModel(
        resnet18, "layer4", example_input=torch.randn(1, 3, 64, 64), class_input=True, architecture="resnet18"
    )
    static = GradCAMModel(resnet18, "layer2", example_input=torch.randn(1, 3, 64, 64), architecture="resnet18")
    paths = {
        "dynamic.onnx": export_onnx(dynamic, out / "dynamic.onnx"),
        "dynamic.pt": export_torchscript(dynamic, out / "dynamic.pt"),
        "static.onnx": export_onnx(static, out / "static.onnx"),
        "static.pt": export_torchscript(static, out / "static.pt"),
    }
    return {"dir": out, "wrappers": {"dynamic": dynamic, "static": static}, **paths}


@pytest.fixture(scope="session")
def static(artifacts):
    """The layer2 artifact's ONNX explainer (stride 8, Grad-CAM top-1, static 64x64)."""
    from gradcam_model.runtime import load_explainer

    return load_explainer(artifacts["static.onnx"])


@pytest.fixture(scope="session")
def dynamic(artifacts):
    """The layer4 artifact's ONNX explainer (stride 32, a class input, dynamic H, W)."""
    from gradcam_model.runtime import load_explainer

    return load_explainer(artifacts["dynamic.onnx"])


def smooth_images(count: int, seed: int):
    """``count`` smooth random images ``[count, 3, 64, 64]`` (blurred noise: maps with structure)."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    smooth = cv2.GaussianBlur(rng.standard_normal((64, 64, 3 * count)).astype(np.float32), (9, 9), 3) * 4
    return np.ascontiguousarray(smooth.reshape(64, 64, count, 3).transpose(2, 3, 0, 1))


@pytest.fixture(scope="session")
def picture_dir(tmp_path_factory):
    """Three PNG pictures a, b, c of 80x100 (H x W), not the input size: boxes must be rescaled."""
    import cv2
    import numpy as np

    folder = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(5)
    for name in ("a", "b", "c"):
        picture = cv2.GaussianBlur(rng.integers(0, 256, (80, 100, 3), dtype=np.uint8), (7, 7), 2)
        cv2.imwrite(str(folder / f"{name}.png"), picture)
    return folder


class ArtifactLogits(torch.nn.Module):
    """An artifact's logits as a torch module, so that pytorch-grad-cam scores the very same model."""

    def __init__(self, explainer):
        super().__init__()
        self.explainer = explainer

    def forward(self, x):
        return torch.from_numpy(self.explainer(x.numpy()).logits)


ODD_PICTURES = ("deep.png", "grey.png", "photo.jpg", "rgba.png", "tall.png", "tiny.png", "wide.png")  # sorted


@pytest.fixture(scope="session")
def odd_picture_dir(tmp_path_factory):
    """Pictures every path must preprocess alike: odd sizes and aspect ratios, grey, RGBA, 16-bit, a JPEG."""
    import cv2
    import numpy as np

    folder = tmp_path_factory.mktemp("odd-pictures")
    rng = np.random.default_rng(11)
    smooth = cv2.resize(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8), (300, 300), interpolation=cv2.INTER_CUBIC)
    alpha = np.linspace(0, 255, 300 * 200).reshape(300, 200, 1).astype(np.uint8)
    pictures = {
        "tall.png": cv2.resize(smooth, (40, 400)),  # 10:1
        "wide.png": cv2.resize(smooth, (400, 40)),
        "tiny.png": smooth[:7, :5],
        "grey.png": cv2.cvtColor(smooth, cv2.COLOR_BGR2GRAY)[:150],
        "rgba.png": np.concatenate([smooth[:, :200], alpha], axis=2),
        "deep.png": np.clip(cv2.resize(smooth, (120, 90)).astype(np.int32) * 257 - rng.integers(0, 257, (90, 120, 3)),
                            0, 65535).astype(np.uint16),  # low bits that a 16-to-8-bit reading must round
        "photo.jpg": cv2.resize(smooth, (333, 250)),
    }  # fmt: skip
    for name, picture in pictures.items():
        cv2.imwrite(str(folder / name), np.ascontiguousarray(picture))
    assert sorted(p.name for p in folder.iterdir()) == list(ODD_PICTURES)
    return folder


@pytest.fixture(scope="session")
def crop_artifact(tmp_path_factory):
    """A tiny ONNX artifact (32x32, 3 classes) that resizes the shorter side, crops the centre half, bicubic."""
    import gradcam_model as gc
    from gradcam_model.contract import Preprocessing

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(4, 3),
    ).eval()  # fmt: skip
    prep = Preprocessing(resize="shorter", crop_pct=0.5, interpolation="bicubic")
    wrapper = GradCAMModel(model, "1", example_input=torch.randn(1, 3, 32, 32), preprocess=prep)
    path = tmp_path_factory.mktemp("crop-artifact") / "crop.onnx"
    gc.export_onnx(wrapper, path)
    return path


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium for the page tests (tests/browser.py), one per module, ended by PID."""
    from browser import start_browser, stop_browser

    driver = start_browser()
    try:
        yield driver
    finally:
        stop_browser(driver)
