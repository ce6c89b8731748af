"""The tested model zoo: torchvision architectures, their target layers and input sizes.

README's "Supported architectures" table is checked against ``ZOO`` by a test.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from gradcam_model.checks.calibration import calibrate, random_model

__all__ = ["CASES", "Case", "ZOO", "build", "calibrate"]


@dataclass(frozen=True)
class Case:
    arch: str
    last: str  # the last conv stage
    inner: str  # an inner stage whose backward crosses convolutions and pooling
    size: int = 64
    num_classes: int = 10


ZOO = [
    Case("vgg16", "features", "features.16"),
    Case("vgg19", "features", "features.27", size=128),  # the original write-up's setup
    Case("resnet18", "layer4", "layer2"),
    Case("resnet50", "layer4", "layer3"),
    Case("densenet121", "features", "features.denseblock3"),
    Case("mobilenet_v2", "features", "features.13"),
    Case("mobilenet_v3_large", "features", "features.12"),
    Case("efficientnet_b0", "features", "features.5"),
    Case("convnext_tiny", "features", "features.5"),
    Case("regnet_y_400mf", "trunk_output", "trunk_output.block3"),
    Case("shufflenet_v2_x1_0", "conv5", "stage3"),
    Case("squeezenet1_1", "features", "features.7"),
    Case("googlenet", "inception5b", "inception4e"),
    Case("inception_v3", "Mixed_7c", "Mixed_6e", size=128),
    Case("mnasnet0_5", "layers", "layers.11"),
]

CASES = {c.arch: c for c in ZOO}


def build(arch: str, num_classes: int = 10, seed: int = 0) -> nn.Module:
    """A randomly initialized torchvision model made fit for CAM comparisons (see ``calibrate``)."""
    return random_model(arch, size=CASES[arch].size if arch in CASES else 64, num_classes=num_classes, seed=seed)
