"""Why a forward pass failed: an input too small for the model, and the module where its map vanished."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["too_small"]


def too_small(model: nn.Module, image: torch.Tensor) -> str | None:
    """Explain a failed forward pass if a larger input would have worked, else None."""
    height, width = int(image.shape[2]), int(image.shape[3])

    def works(scale: float) -> bool:
        size = (max(1, math.ceil(height * scale)), max(1, math.ceil(width * scale)))
        try:
            with torch.no_grad():
                model(torch.zeros(1, image.shape[1], *size, dtype=image.dtype, device=image.device))
        except RuntimeError:
            return False
        return True

    scale = 2.0
    while not works(scale):
        scale *= 2
        if max(height, width) * scale > 1024:
            return None  # not a size problem
    low, high = scale / 2, scale  # fails at low, works at high: bisect the smallest working scale
    for _ in range(12):
        mid = (low + high) / 2
        low, high = (low, mid) if works(mid) else (mid, high)
    smallest = (math.ceil(height * high), math.ceil(width * high))
    where = _failing_module(model, image)
    return (
        f"input {height}x{width} is too small for this model{where}; the smallest input of this aspect "
        f"ratio that works is about {smallest[0]}x{smallest[1]}: use a larger input size"
    )


def _failing_module(model: nn.Module, image: torch.Tensor) -> str:
    """Name the innermost module whose forward raised, with the feature map it was given."""
    stack: list[tuple[str, str, str]] = []
    handles = []

    def enter(name):
        def hook(module, inputs):
            shape = inputs[0].shape if inputs and isinstance(inputs[0], torch.Tensor) else None
            size = "x".join(map(str, shape[1:])) if shape is not None and len(shape) > 1 else "?"
            stack.append((name, type(module).__name__, size))

        return hook

    def leave(_module, _inputs, _output):
        stack.pop()

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_pre_hook(enter(name)))
            handles.append(module.register_forward_hook(leave))
    try:
        with torch.no_grad():
            model(image[:1])
    except RuntimeError:
        pass  # expected: the stack now ends at the module that raised
    finally:
        for h in handles:
            h.remove()
    if not stack:
        return ""
    name, kind, size = stack[-1]
    return f": the feature map reaching {name!r} ({kind}) is only {size}"
