"""Random-weight models made fit for timing and map comparisons: normal-scale heads, calibrated BatchNorm."""

from __future__ import annotations

import torch
from torch import nn

from ..models import load_model

__all__ = ["calibrate", "random_model"]


@torch.no_grad()
def calibrate(model: nn.Module, size: int, *, seed: int = 0, batches: int = 3) -> nn.Module:
    """Give a random model O(1) activations and maps instead of vanishing ones; return it in eval mode.

    Randomly initialized heads and BatchNorm statistics make activations vanish layer
    after layer (untouched random MobileNetV3 logits are ~1e-10, maps ~1e-15): then any
    eps decides the maps, comparisons mean nothing and subnormal numbers distort timings.
    Linear heads get a normal scale and BatchNorm running statistics are calibrated on
    ``batches`` random batches of ``size`` x ``size`` images.
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


def random_model(arch: str, *, size: int, num_classes: int | None = None, seed: int = 0) -> nn.Module:
    """:func:`~gradcam_model.models.load_model` with random weights (seeded), then :func:`calibrate`."""
    torch.manual_seed(seed)
    return calibrate(load_model(arch, num_classes=num_classes), size, seed=seed)
