"""Image I/O and preprocessing driven by an artifact's metadata."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..contract import ArtifactMetadata
from ..errors import InputError

__all__ = ["IMAGE_SUFFIXES", "DEFAULT_MAX_SIDE", "decode_image", "load_image", "preprocess", "target_size"]

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

    The picture is resized to the artifact's input size (see :func:`target_size`), then
    scaled to ``[0, 1]`` and normalized with the artifact's ``mean`` and ``std``: what
    an :class:`~gradcam_model.runtime.Explainer` expects.
    """
    import cv2

    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3:
        shape = getattr(rgb, "shape", None)
        raise InputError(f"expected an RGB image array [H, W, 3], got {shape if shape is not None else type(rgb)}")
    h, w = target_size(metadata, size)
    # float first, then resize: the numerics every artifact was validated with (and the C++ runner's);
    # huge pictures are already decoded reduced (decode_image), so this stays small
    image = rgb.astype(np.float32) / 255.0 if rgb.dtype == np.uint8 else rgb.astype(np.float32)
    if image.shape[:2] != (h, w):
        shrink = image.shape[0] > h or image.shape[1] > w
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    image = (image - np.asarray(metadata.mean, np.float32)) / np.asarray(metadata.std, np.float32)
    return np.ascontiguousarray(image.transpose(2, 0, 1))
