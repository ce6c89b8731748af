"""Image I/O and preprocessing driven by an artifact's metadata."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..contract import ArtifactMetadata
from ..errors import InputError

__all__ = [
    "IMAGE_SUFFIXES",
    "DEFAULT_MAX_SIDE",
    "decode_image",
    "explained_region",
    "load_image",
    "preprocess",
    "target_size",
]

# GIF: OpenCV (>= 4.11) decodes the first frame of an animation, on every path (files, folders, the server)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
DEFAULT_MAX_SIDE = 2048  # pixels: larger pictures are decoded reduced (a 12000x8000 photo needs no more)
_JPEG_MAGIC = b"\xff\xd8\xff"
_PROBE_BYTES = 2_000_000  # only JPEG files this large can hold a picture worth decoding reduced


def _reduced_flag(cv2, factor: int) -> int:
    return {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4}.get(
        factor, cv2.IMREAD_REDUCED_COLOR_8
    )


def decode_image(data: bytes | np.ndarray, *, max_side: int | None = DEFAULT_MAX_SIDE, source: str = "image"):
    """Decode encoded image bytes to RGB ``uint8 [H, W, 3]`` no larger than ``max_side`` on its long side.

    Large JPEGs are decoded at 1/2, 1/4 or 1/8 scale by libjpeg itself (OpenCV's
    ``IMREAD_REDUCED_COLOR_*``), so a 12000x8000 photo never exists in memory at full
    size; other formats are decoded and then shrunk in ``uint8``. ``max_side=None``
    keeps the full resolution.
    """
    import cv2

    buffer = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray)) else data
    if buffer.size == 0:
        raise InputError(f"{source}: empty file, not an image")
    image = None
    if max_side and buffer.size >= _PROBE_BYTES and bytes(buffer[:3]) == _JPEG_MAGIC:
        probe = cv2.imdecode(buffer, cv2.IMREAD_REDUCED_COLOR_8)  # DCT scaling: cheap even for huge photos
        if probe is not None:
            long_side = max(probe.shape[:2]) * 8
            factor = 8
            while factor > 1 and long_side // factor < max_side:
                factor //= 2
            image = probe if factor == 8 else cv2.imdecode(buffer, _reduced_flag(cv2, factor))
    if image is None:
        image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(f"{source}: not a readable image (expected PNG, JPEG, BMP, TIFF, WebP or GIF)")
    if max_side and max(image.shape[:2]) > max_side:
        scale = max_side / max(image.shape[:2])
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def load_image(path: str | os.PathLike, *, max_side: int | None = None) -> np.ndarray:
    """Read an image file as RGB ``uint8 [H, W, 3]``; ``InputError`` if it cannot be decoded.

    Args:
        path: the file.
        max_side: decode large pictures reduced to at most this many pixels on their
            long side (None: full resolution, the default here; ``gradcam explain`` uses
            :data:`DEFAULT_MAX_SIDE`).
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        reason = "no such image file" if not path.exists() else (exc.strerror or str(exc))
        raise InputError(f"{path}: {reason}") from None
    return decode_image(data, max_side=max_side, source=str(path))


def target_size(metadata: ArtifactMetadata, size: tuple[int, int] | None = None) -> tuple[int, int]:
    """The ``(H, W)`` images are resized to: fixed by the artifact, else ``size``, else the export size."""
    if metadata.input_size is not None:
        if size is not None and tuple(size) != tuple(metadata.input_size):
            raise InputError(f"this artifact takes {metadata.input_size[0]}x{metadata.input_size[1]} images only")
        return tuple(metadata.input_size)
    return tuple(size) if size is not None else tuple(metadata.example_size)


def preprocess(rgb: np.ndarray, metadata: ArtifactMetadata, size: tuple[int, int] | None = None) -> np.ndarray:
    """RGB ``uint8 [H, W, 3]`` (or float in ``[0, 1]``) to a normalized float32 ``[3, h, w]`` input.

    Applies the artifact's recorded preprocessing (``metadata.preprocessing``: resize,
    centre crop, interpolation, scale; see :class:`~gradcam_model.contract.Preprocessing`)
    to reach its input size (see :func:`target_size`), then normalizes with its ``mean``
    and ``std``: what an :class:`~gradcam_model.runtime.Explainer` expects.
    :func:`explained_region` says which pixels of the picture the input shows.
    """
    from .preprocessing import apply

    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3:
        shape = getattr(rgb, "shape", None)
        raise InputError(f"expected an RGB image array [H, W, 3], got {shape if shape is not None else type(rgb)}")
    return apply(rgb, metadata, target_size(metadata, size))[0]


def explained_region(
    picture: tuple[int, ...], metadata: ArtifactMetadata, size: tuple[int, int] | None = None
) -> tuple[float, float, float, float]:
    """The pixels of a picture of shape ``picture`` (``(H, W, ...)``) that :func:`preprocess` turns into the input.

    ``(x, y, w, h)`` in the picture's pixels: the whole picture for a stretch, the centre
    crop's part of it otherwise. A map of the input covers exactly this region.
    """
    from .preprocessing import plan

    size = target_size(metadata, size)
    return plan(metadata.preprocessing, (int(picture[0]), int(picture[1])), size, metadata.example_size).region
