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

__all__ = ["Layout", "NCHW", "grid_problem", "classify", "axis_problem", "pooled_grid", "MAX_PREFIX_TOKENS"]

MAX_PREFIX_TOKENS = 8  # class, distillation and register tokens come before the patches
MAX_POOLING = 64  # the largest stride a token model pools its patch grid by


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
    *,
    pooled: bool = False,
    image_channels: int | None = None,
) -> tuple[Layout | None, str | None]:
    """The layout of an output of ``shape`` for an input of ``input_size``, or why it has none.

    ``patch_grid`` is the ``h x w`` of the last real image map computed before (a ViT's
    patch embedding): a token sequence covers it after at most ``MAX_PREFIX_TOKENS``, or,
    with ``pooled`` (tokens that follow tokens), that grid pooled by one stride.
    A tensor with the image's ``image_channels`` at least as large as the image on both
    sides is the image scaled up (CrossViT resizes its input to each branch's size): maps
    computed from it still cover the whole image.
    """
    text = "x".join(map(str, shape[1:]))
    if shape[0] != batch:
        return None, f"its output {text} has {shape[0]} rows for a batch of {batch} (windows or heads folded in)"
    if len(shape) == 4:
        problem = grid_problem(shape, input_size)
        if problem is None or _scaled_image(shape, input_size, image_channels):
            return NCHW, None
        if grid_problem((shape[0], shape[3], shape[1], shape[2]), input_size) is None:
            return Layout("NHWC"), None
        return None, problem
    if len(shape) == 3 and patch_grid is not None:
        grid = pooled_grid(int(shape[1]), patch_grid, 1 if not pooled else MAX_POOLING)
        if grid is not None:
            return Layout("tokens", shape[1] - grid[0] * grid[1], grid), None
        return None, (
            f"its {shape[1]} tokens do not cover the {patch_grid[0]}x{patch_grid[1]} patch grid, "
            f"nor that grid pooled by one stride along both axes (plus at most {MAX_PREFIX_TOKENS} prefix tokens)"
        )
    return None, f"its output {text} is not an image map"


def _scaled_image(shape: tuple[int, ...], input_size: tuple[int, int], channels: int | None) -> bool:
    return shape[1] == channels and shape[2] >= input_size[0] and shape[3] >= input_size[1]


def pooled_grid(tokens: int, patch_grid: tuple[int, int], max_stride: int = MAX_POOLING) -> tuple[int, int] | None:
    """The grid ``tokens`` cover: the patch grid itself, or the patch grid pooled by one stride.

    Token models that downsample their sequence (MViT's pooled attention, LeViT's
    subsampling) keep ``ceil(h / s) x ceil(w / s)`` tokens of an ``h x w`` patch grid, after
    at most ``MAX_PREFIX_TOKENS`` prefix tokens. The smallest stride that accounts for
    every token is taken; pooled grids of fewer than 4 positions are not considered.
    """
    height, width = patch_grid
    for stride in range(1, max_stride + 1):
        grid = (-(-height // stride), -(-width // stride))
        if stride > 1 and grid[0] * grid[1] < 4:
            break  # a pooled "grid" of 1-3 positions would match any short sequence
        if 0 <= tokens - grid[0] * grid[1] <= MAX_PREFIX_TOKENS:
            return grid
    return None


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
