"""An artifact's recorded preprocessing, applied: resize, centre crop, scale, normalize.

One function per language applies :class:`~gradcam_model.contract.Preprocessing`;
this is Python's, and every Python path (``explain_files``, ``gradcam serve``, the Ray
actors, ``evaluate``) calls it through :func:`gradcam_model.runtime.preprocess`.
:func:`plan` says where the network input comes from in the original picture, so
pictures can place a map on the pixels the model saw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..contract import ArtifactMetadata, Preprocessing
from ..errors import InputError
from .resample import nearest, resample

__all__ = ["Plan", "plan", "apply"]


@dataclass(frozen=True)
class Plan:
    """Where a picture of ``(H, W)`` goes: resized to ``resized``, then ``crop`` ``(top, left, h, w)`` of that.

    ``region`` is the crop in the original picture's pixels, ``(x, y, w, h)`` as floats.
    """

    resized: tuple[int, int]
    crop: tuple[int, int, int, int]
    region: tuple[float, float, float, float]


def _resized_size(
    prep: Preprocessing, picture: tuple[int, int], size: tuple[int, int], reference: tuple[int, int]
) -> tuple[int, int]:
    h, w = picture
    if prep.resize == "stretch":
        return math.floor(size[0] / prep.crop_pct), math.floor(size[1] / prep.crop_pct)
    if prep.resize_size is not None or size[0] == size[1]:
        # torchvision's Resize(int): the shorter side gets the size, the longer one int(size * long / short)
        if prep.resize_size is None:
            side = math.floor(size[0] / prep.crop_pct)
        elif min(size) == min(reference):
            side = prep.resize_size
        else:  # stated for the export's input size: scaled with the input
            side = round(prep.resize_size * min(size) / min(reference))
        if w <= h:
            return int(side * h / w), side
        return side, int(side * w / h)
    # a non-square input: timm's ResizeKeepRatio(floor(size / crop_pct)), the picture covering that size
    target = (math.floor(size[0] / prep.crop_pct), math.floor(size[1] / prep.crop_pct))
    ratio = min(h / target[0], w / target[1])
    return round(h / ratio), round(w / ratio)


def plan(
    prep: Preprocessing, picture: tuple[int, int], size: tuple[int, int], reference: tuple[int, int] | None = None
) -> Plan:
    """The resize and crop that turn a picture of ``picture`` ``(H, W)`` into an input of ``size`` ``(h, w)``.

    ``reference``: the input size ``resize_size`` is stated for (the artifact's example
    size; default ``size``); at other sizes it scales with the input.

    Raises:
        InputError: the recorded resize is smaller than the crop (``resize_size`` below the
            input size), so no crop of ``size`` exists.
    """
    resized = _resized_size(prep, picture, size, reference or size)
    if resized[0] < size[0] or resized[1] < size[1]:
        raise InputError(
            f"the preprocessing resizes a {picture[0]}x{picture[1]} picture to {resized[0]}x{resized[1]}, "
            f"smaller than the {size[0]}x{size[1]} crop"
        )
    # torchvision's center_crop rounding
    top, left = int(round((resized[0] - size[0]) / 2.0)), int(round((resized[1] - size[1]) / 2.0))
    sy, sx = picture[0] / resized[0], picture[1] / resized[1]
    region = (left * sx, top * sy, size[1] * sx, size[0] * sy)
    return Plan(resized=tuple(resized), crop=(top, left, size[0], size[1]), region=region)


def _resize(image: np.ndarray, size: tuple[int, int], crop: tuple[int, int, int, int], prep: Preprocessing):
    """``image`` resized to ``size``, then its ``crop`` ``(top, left, h, w)``."""
    top, left, h, w = crop
    if image.shape[:2] == tuple(size):
        return image[top : top + h, left : left + w]
    if prep.interpolation in ("bilinear", "bicubic"):
        return resample(image, size, prep.interpolation, antialias=prep.antialias, crop=crop)  # the crop's pixels only
    if prep.interpolation == "area":
        import cv2

        # version 1's numerics: float pixels, OpenCV's area average to shrink, bilinear to enlarge
        shrink = image.shape[0] > size[0] or image.shape[1] > size[1]
        image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    else:
        image = nearest(image, size)
    return image[top : top + h, left : left + w]


def apply(rgb: np.ndarray, metadata: ArtifactMetadata, size: tuple[int, int]) -> tuple[np.ndarray, Plan]:
    """RGB ``uint8 [H, W, 3]`` (or float in ``[0, 1]``) to the normalized float32 ``[3, h, w]`` input, and its plan."""
    prep = metadata.preprocessing
    picture = (int(rgb.shape[0]), int(rgb.shape[1]))
    if picture[0] < 1 or picture[1] < 1:
        raise InputError(f"the picture is empty: {rgb.shape}")
    steps = plan(prep, picture, size, metadata.example_size)
    if prep.interpolation == "area" or rgb.dtype != np.uint8:
        # area works on float pixels; a float picture is already in [0, 1]
        image = rgb.astype(np.float32) / np.float32(prep.scale) if rgb.dtype == np.uint8 else rgb.astype(np.float32)
        image = _resize(image, steps.resized, steps.crop, prep)
    else:
        image = _resize(rgb, steps.resized, steps.crop, prep)  # uint8, with Pillow's rounding between the passes
    # planar first: the same float operations per element, without broadcasting 3 values over [h, w, 3] (~6x faster)
    planes = np.ascontiguousarray(image.transpose(2, 0, 1)).astype(np.float32)
    if image.dtype == np.uint8:
        planes /= np.float32(prep.scale)
    if prep.channel_order == "BGR":
        planes = planes[::-1]
    planes -= np.asarray(metadata.mean, np.float32)[:, None, None]
    planes /= np.asarray(metadata.std, np.float32)[:, None, None]
    return np.ascontiguousarray(planes), steps
