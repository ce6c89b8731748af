"""Separable image resampling with Pillow's arithmetic, in numpy (no Pillow, no torch).

The models' own eval transforms (torchvision's weights enums, timm's ``create_transform``)
resize with Pillow, or with torch kernels written to reproduce it: a convolution with a
filter whose support widens with the shrink factor (antialiasing), weights normalized per
output pixel, the horizontal pass first, and for 8-bit pictures fixed-point weights with
the intermediate rounded to ``uint8``. This module computes the same weights, so an
artifact's input equals what the model was evaluated on, not an OpenCV approximation of it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["FILTERS", "resample", "nearest"]

_PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point weights for 8-bit images (Resample.c)


def _bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _bicubic(x: np.ndarray) -> np.ndarray:
    a = -0.5  # Pillow's bicubic
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _box(x: np.ndarray) -> np.ndarray:
    return np.where((x > -0.5) & (x <= 0.5), 1.0, 0.0)


@dataclass(frozen=True)
class _Filter:
    function: object
    support: float


FILTERS = {"bilinear": _Filter(_bilinear, 1.0), "bicubic": _Filter(_bicubic, 2.0), "box": _Filter(_box, 0.5)}


@functools.lru_cache(maxsize=64)
def _coefficients(in_size: int, out_size: int, kind: str, antialias: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per output pixel: the first input index and the weights of its taps (Pillow's ``precompute_coeffs``).

    Returns ``(first [out], weights [out, taps])``, read-only; taps past the picture's edge
    weigh 0. Cached, like :func:`_taps`: a server sees the same picture sizes again and again
    (~0.3 ms of small numpy calls per 224x224 picture).
    """
    spec = FILTERS[kind]
    scale = in_size / out_size
    filter_scale = max(scale, 1.0) if antialias else 1.0
    support = spec.support * filter_scale
    taps = int(math.ceil(support)) * 2 + 1
    centers = (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    # C's (int) cast truncates toward zero; the values are >= -support + 0.5 > -1 only after clamping
    first = np.maximum(np.trunc(centers - support + 0.5), 0).astype(np.int64)
    last = np.minimum(np.trunc(centers + support + 0.5), in_size).astype(np.int64)
    offsets = np.arange(taps, dtype=np.int64)
    positions = first[:, None] + offsets[None, :]
    valid = offsets[None, :] < (last - first)[:, None]
    weights = np.where(valid, spec.function((positions - centers[:, None] + 0.5) / filter_scale), 0.0)
    totals = weights.sum(axis=1, keepdims=True)
    weights = np.divide(weights, totals, out=weights, where=totals != 0.0)
    return _frozen(first), _frozen(weights)


def _frozen(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)  # cached: shared by every later call
    return array


@functools.lru_cache(maxsize=64)
def _taps(
    size: tuple[int, int], start: int, stop: int, rows: int, offset: int, kind: str, antialias: bool, fixed: bool
) -> tuple[np.ndarray, np.ndarray]:
    """One pass's gather index and weights ``[kept, taps]`` (Pillow's fixed point if ``fixed``), read-only.

    For the output rows ``start:stop`` of ``size[0]`` -> ``size[1]``, reading ``rows`` input
    rows from ``offset`` on. A tap no kept row uses (the last, often) is left out.
    """
    first, weights = _coefficients(size[0], size[1], kind, antialias)
    first, weights = first[start:stop], weights[start:stop]
    taps = np.flatnonzero((weights != 0).any(axis=0))
    index = np.minimum(first[:, None] - offset + taps[None, :], rows - 1)
    weights = weights[:, taps]
    if fixed:
        weights = np.where(weights < 0, np.trunc(-0.5 + weights * (1 << _PRECISION_BITS)),
                           np.trunc(0.5 + weights * (1 << _PRECISION_BITS))).astype(np.int32)  # fmt: skip
    return _frozen(index), _frozen(np.ascontiguousarray(weights))


def _pass(image: np.ndarray, size: tuple[int, int], keep: slice, *, kind: str, antialias: bool, offset: int = 0):
    """Axis 0 resampled from ``size[0]`` rows to ``size[1]``; only the output rows ``keep``.

    ``image`` holds the input rows from ``offset`` on, enough for the rows kept. Rows are
    gathered whole, so every tap is one copy of contiguous rows and one multiply-add.
    """
    start, stop, _ = keep.indices(size[1])
    integer = image.dtype == np.uint8
    index, weights = _taps(tuple(size), start, stop, image.shape[0], offset, kind, antialias, integer)
    column = (-1,) + (1,) * (image.ndim - 1)
    if integer:
        total = np.full((len(index), *image.shape[1:]), 1 << (_PRECISION_BITS - 1), np.int32)  # Pillow's accumulator
        term = np.empty_like(total)
        # one multiply-add per tap: integer sums, so the order cannot change Pillow's result
        for t in range(weights.shape[1]):
            total += np.multiply(image[index[:, t]], weights[:, t].reshape(column), out=term)
        total >>= _PRECISION_BITS
        return np.clip(total, 0, 255, out=total).astype(np.uint8)  # in place: ~10x np.clip's new array
    total = np.zeros((len(index), *image.shape[1:]), np.float64)
    for t in range(weights.shape[1]):  # Pillow's float loop: the taps summed in order from 0.0
        total += image[index[:, t]] * weights[:, t].reshape(column)
    return total.astype(image.dtype)


def _span(in_size: int, out_size: int, keep: slice, kind: str, antialias: bool) -> tuple[int, int]:
    """The input rows ``[lo, hi)`` that the output rows ``keep`` of a pass read."""
    first, weights = _coefficients(in_size, out_size, kind, antialias)
    first, weights = first[keep], weights[keep]
    used = (weights != 0).shape[1] - np.argmax((weights != 0)[:, ::-1], axis=1)  # taps up to the last nonzero
    return int(first.min()), int(min((first + used).max(), in_size))


def resample(
    image: np.ndarray,
    size: tuple[int, int],
    kind: str,
    *,
    antialias: bool = True,
    crop: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """``image`` ``[H, W, C]`` (``uint8`` or float) resized to ``size`` ``(h, w)`` as Pillow's ``resize`` does.

    Args:
        kind: ``"bilinear"``, ``"bicubic"`` or ``"box"`` (Pillow's filters of those names).
        antialias: widen the filter by the shrink factor (Pillow always does; without it
            a shrink samples like OpenCV's ``INTER_LINEAR``).
        crop: ``(top, left, h, w)``: return only that window of the resized picture,
            computing only its pixels (equal to cropping the whole result).

    A ``uint8`` picture is computed in Pillow's fixed point and rounded to ``uint8`` after
    the first pass, as Pillow does; a float one in float64 and returned in its dtype.
    """
    h, w = int(size[0]), int(size[1])
    top, left, ch, cw = crop if crop is not None else (0, 0, h, w)
    rows, cols = slice(top, top + ch), slice(left, left + cw)
    kw = {"kind": kind, "antialias": antialias}
    if h == image.shape[0] or w == image.shape[1]:  # one pass, or none
        out = image[:, cols] if w == image.shape[1] else _swap(_pass(_swap(image), (image.shape[1], w), cols, **kw))
        return out[rows] if h == image.shape[0] else _pass(out, (image.shape[0], h), rows, **kw)
    # Pillow 13 runs the vertical pass first where it shrinks more than the horizontal one
    # (measured: the order decides the uint8 rounding in between; Resample.c of older
    # releases always went horizontal first)
    if h / image.shape[0] < min(1.0, w / image.shape[1]):
        lo, hi = _span(image.shape[1], w, cols, **kw)  # the first pass only where the second one reads
        out = _swap(_pass(image[:, lo:hi], (image.shape[0], h), rows, **kw))
        return _swap(_pass(out, (image.shape[1], w), cols, **kw, offset=lo))
    lo, hi = _span(image.shape[0], h, rows, **kw)
    out = _swap(_pass(_swap(image[lo:hi]), (image.shape[1], w), cols, **kw))
    return _pass(out, (image.shape[0], h), rows, **kw, offset=lo)


def _swap(image: np.ndarray) -> np.ndarray:
    """Rows and columns exchanged, contiguous (OpenCV's transpose: ~20x numpy's strided copy of 3-byte pixels)."""
    if image.ndim == 3 and image.shape[2] <= 4 and image.dtype in (np.uint8, np.float32, np.float64):
        return cv2.transpose(image).reshape(image.shape[1], image.shape[0], image.shape[2])
    return np.ascontiguousarray(np.swapaxes(image, 0, 1))


def _nearest_index(in_size: int, out_size: int) -> np.ndarray:
    # Pillow's ImagingScaleAffine: x = 0.5 * step, then step added once per pixel (the sum's
    # rounding decides pixels that fall exactly on a boundary), truncated toward zero
    step = in_size / out_size
    positions = np.add.accumulate(np.concatenate([[step * 0.5], np.full(out_size - 1, step)]))
    return np.minimum(positions.astype(np.int64), in_size - 1)


def nearest(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pillow's ``NEAREST`` resize: pixel ``i`` takes input ``int((i + 0.5) * in / out)``, summed as Pillow does."""
    rows = _nearest_index(image.shape[0], int(size[0]))
    cols = _nearest_index(image.shape[1], int(size[1]))
    return image[rows][:, cols]
