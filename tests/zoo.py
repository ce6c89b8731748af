"""The tested model zoo: torchvision architectures, their target layers and input sizes.

README's "Supported architectures" table is checked against ``ZOO`` by a test.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchvision
from torch import nn


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
    torch.manual_seed(seed)
    kwargs = {"weights": None, "num_classes": num_classes}
    if arch in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=True)
    model = torchvision.models.get_model(arch, **kwargs)
    return calibrate(model, CASES[arch].size if arch in CASES else 64, seed=seed)


@torch.no_grad()
def calibrate(model: nn.Module, size: int, seed: int = 0, batches: int = 3) -> nn.Module:
    """Give a random model O(1) maps instead of ~1e-15 ones.

    Randomly initialized heads and BatchNorm statistics make activations vanish
    layer after layer; then any eps decides the maps and no comparison means
    anything. Linear heads get a normal scale and BatchNorm running statistics are
    calibrated on a few random batches. Returns the model in eval mode.
    """
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.weight.normal_(0, 1.0 / m.in_features**0.5, generator=gen)
            if m.bias is not None:
                m.bias.zero_()
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
    model.train()
    for _ in range(batches):
        model(torch.randn(4, 3, size, size, generator=gen))
    return model.eval()
