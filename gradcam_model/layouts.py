"""How a layer's output covers the image: ``[N, C, h, w]``, channels-last, or transformer tokens.

Grad-CAM needs activations laid out ``[N, C, h, w]`` over the image. CNN layers are
already; Swin hands ``[N, h, w, C]`` from stage to stage; ViT/DeiT blocks keep
``[N, T, D]`` token sequences (prefix tokens such as the class token, then one token
per patch in raster order). A :class:`Layout` says which, and turns activations and
gradients into ``[N, C, h, w]`` inside the traced graph. Anything else (attention
matrices ``[N, heads, T, T]``, windowed tokens) is refused: read as an image map it
would give stripes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["Layout", "NCHW", "grid_problem", "classify", "axis_problem", "MAX_PREFIX_TOKENS"]

MAX_PREFIX_TOKENS = 8  # class, distillation and register tokens come before the patches


@dataclass(frozen=True)
class Layout:
    """The layout of a layer's output and the reshape that makes it ``[N, C, h, w]``."""

    kind: str  # "NCHW", "NHWC" or "tokens"
    prefix: int = 0  # tokens before the patch tokens (class, distillation, registers)
    grid: tuple[int, int] | None = None  # patch grid of a token sequence

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        """Activations or gradients in this layout as ``[N, C, h, w]`` (pure torch: traced into the graph)."""
        if self.kind == "NHWC":
            return tensor.permute(0, 3, 1, 2)
        if self.kind == "tokens":
            height, width = self.grid
            return tensor[:, self.prefix :].transpose(1, 2).reshape(tensor.shape[0], tensor.shape[2], height, width)
        return tensor

    def describe(self, shape: tuple[int, ...]) -> str:
        if self.kind == "NHWC":
            return f"channels-last {'x'.join(map(str, shape[1:]))} -> {shape[3]}x{shape[1]}x{shape[2]}"
        if self.kind == "tokens":
            return (
                f"{shape[1]} tokens x {shape[2]} -> {shape[2]}x{self.grid[0]}x{self.grid[1]} "
                f"(after {self.prefix} prefix token{'s' if self.prefix != 1 else ''})"
            )
        return "x".join(map(str, shape[1:]))


NCHW = Layout("NCHW")


def grid_problem(output_shape: tuple[int, ...], input_size: tuple[int, int]) -> str | None:
    """Why a 4-D output cannot be the ``[N, C, h, w]`` map of an ``H x W`` input, or None.

    A feature map of a CNN covers the image with one stride ``s`` along both axes:
    ``h ~ H / s`` and ``w ~ W / s`` (give or take one row for padding and rounding),
    and is no larger than the image. A channels-last ``[N, h, w, C]`` tensor read as
    NCHW has ``w = C``, and ``[N, heads, tokens, dims]`` has sizes unrelated to the image.
    """
    h, w = int(output_shape[2]), int(output_shape[3])
    height, width = input_size

    def strides(size: int, n: int) -> tuple[float, float]:
        return size / (n + 1), (size / (n - 1) if n > 1 else math.inf)

    (lo_h, hi_h), (lo_w, hi_w) = strides(height, h), strides(width, w)
    if h <= height and w <= width and max(lo_h, lo_w) <= min(hi_h, hi_w):
        return None
    return (
        f"its output {'x'.join(map(str, output_shape[1:]))} is not a [C, h, w] map of the {height}x{width} input: "
        f"no single stride turns {height}x{width} into {h}x{w}"
    )


def classify(
    shape: tuple[int, ...],
    input_size: tuple[int, int],
    batch: int,
    patch_grid: tuple[int, int] | None,
) -> tuple[Layout | None, str | None]:
    """The layout of an output of ``shape`` for an input of ``input_size``, or why it has none.

    ``patch_grid`` is the ``h x w`` of the last real image map computed before (a ViT's
    patch embedding): a token sequence covers it after at most ``MAX_PREFIX_TOKENS``.
    """
    text = "x".join(map(str, shape[1:]))
    if shape[0] != batch:
        return None, f"its output {text} has {shape[0]} rows for a batch of {batch} (windows or heads folded in)"
    if len(shape) == 4:
        problem = grid_problem(shape, input_size)
        if problem is None:
            return NCHW, None
        if grid_problem((shape[0], shape[3], shape[1], shape[2]), input_size) is None:
            return Layout("NHWC"), None
        return None, problem
    if len(shape) == 3 and patch_grid is not None:
        prefix = shape[1] - patch_grid[0] * patch_grid[1]
        if 0 <= prefix <= MAX_PREFIX_TOKENS:
            return Layout("tokens", prefix, patch_grid), None
        return None, (
            f"its {shape[1]} tokens do not cover the {patch_grid[0]}x{patch_grid[1]} patch grid "
            f"(plus at most {MAX_PREFIX_TOKENS} prefix tokens)"
        )
    return None, f"its output {text} is not an image map"


def axis_problem(layout: Layout, shape: tuple[int, ...], taller: tuple[int, ...]) -> tuple[Layout | None, str | None]:
    """Check a 4-D layout against the shape seen at a taller input: only the height axis may grow.

    Returns the (possibly corrected) layout, or why the output is neither NCHW nor NHWC.
    A square channels-last tensor (``[N, 8, 8, 8]``) passes the stride test as NCHW; the
    taller input shows its dimension 1 growing instead of dimension 2.
    """
    grew = [d for d in (1, 2, 3) if shape[d] != taller[d]]
    if grew in ([], [2]) and layout.kind == "NCHW" or grew in ([], [1]) and layout.kind == "NHWC":
        return layout, None
    if grew == [1] and layout.kind == "NCHW":
        return Layout("NHWC"), None
    return None, (
        f"a taller input changes its dimension {' and '.join(map(str, grew))} "
        f"({'x'.join(map(str, shape[1:]))} -> {'x'.join(map(str, taller[1:]))}): "
        "it is laid out neither [N, C, h, w] nor [N, h, w, C]"
    )
