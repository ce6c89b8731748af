"""Argument checks shared by the wrapper and the eager reference: one message per mistake, of our own types."""

from __future__ import annotations

import torch

from ..errors import InputError

__all__ = ["check_class_index", "check_class_names", "check_image", "check_stats", "check_top_k"]


def check_class_names(names, num_classes: int) -> tuple[str, ...] | None:
    if names is None:
        return None
    names = tuple(str(n) for n in names)
    if len(names) != num_classes:
        raise InputError(f"class_names has {len(names)} entries but the model has {num_classes} classes")
    return names


def check_stats(values, what: str, channels: int) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) != channels:
        raise InputError(f"{what} must have one value per input channel ({channels}), got {values}")
    return values


def check_image(image, what: str, channels: int | None = None, size: tuple[int, int] | None = None) -> None:
    if not isinstance(image, torch.Tensor):
        raise InputError(f"{what} must be a torch.Tensor of shape [N, C, H, W], got {type(image).__name__}")
    if image.dim() != 4:
        raise InputError(f"{what} must have shape [N, C, H, W], got {tuple(image.shape)}")
    if not image.is_floating_point():
        raise InputError(f"{what} must be a floating-point tensor (normalized pixels), got {image.dtype}")
    if image.shape[0] < 1:
        raise InputError(f"{what} has an empty batch")
    if channels is not None and image.shape[1] != channels:
        raise InputError(f"{what} must have {channels} channels, got shape {tuple(image.shape)}")
    if size is not None and tuple(image.shape[2:]) != tuple(size):
        raise InputError(
            f"{what} must be {size[0]}x{size[1]} (this graph has a fixed spatial size), got {tuple(image.shape)}"
        )


def check_class_index(class_index, batch: int, num_classes: int) -> torch.Tensor:
    """Validate a ``[N]`` class index (``-1`` = top class) and return it as int64."""
    if not isinstance(class_index, torch.Tensor):
        class_index = torch.as_tensor(class_index)
    if class_index.dim() == 0:
        class_index = class_index.expand(batch)
    if class_index.dim() != 1 or class_index.shape[0] != batch:
        raise InputError(f"class_index must have shape [{batch}] (one class per image), got {tuple(class_index.shape)}")
    if class_index.is_floating_point() or class_index.dtype == torch.bool or class_index.is_complex():
        raise InputError(f"class_index must be integers, got {class_index.dtype}")
    class_index = class_index.long()
    bad = (class_index < -1) | (class_index >= num_classes)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise InputError(
            f"class_index[{i}] = {int(class_index[i])} is out of range; expected 0..{num_classes - 1}, "
            "or -1 for the top prediction"
        )
    return class_index


def check_top_k(top_k, class_input: bool) -> None:
    """``top_k`` is a positive int, and 1 when the classes are an input."""
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise InputError(f"top_k must be a positive int, got {top_k!r}")
    if class_input and top_k != 1:
        raise InputError("class_input=True explains the given class only; use top_k=1 with it")
