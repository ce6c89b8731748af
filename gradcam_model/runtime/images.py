"""Image I/O and preprocessing driven by an artifact's metadata."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..export.metadata import ArtifactMetadata

__all__ = ["IMAGE_SUFFIXES", "load_image", "preprocess", "target_size"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as RGB ``uint8 [H, W, 3]``; ``InputError`` if it cannot be decoded."""
    import cv2

    path = Path(path)
    data = np.fromfile(path, dtype=np.uint8) if path.is_file() else None
    if data is None:
        raise InputError(f"{path}: no such image file")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise InputError(f"{path}: not a readable image (expected PNG, JPEG, BMP, TIFF or WebP)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def target_size(metadata: ArtifactMetadata, size: tuple[int, int] | None = None) -> tuple[int, int]:
    """The ``(H, W)`` images are resized to: fixed by the artifact, else ``size``, else the export size."""
    if metadata.input_size is not None:
        if size is not None and tuple(size) != tuple(metadata.input_size):
            raise InputError(f"this artifact takes {metadata.input_size[0]}x{metadata.input_size[1]} images only")
        return tuple(metadata.input_size)
    return tuple(size) if size is not None else tuple(metadata.example_size)


def preprocess(rgb: np.ndarray, metadata: ArtifactMetadata, size: tuple[int, int] | None = None) -> np.ndarray:
    """RGB ``uint8 [H, W, 3]`` (or float in ``[0, 1]``) to a normalized float32 ``[3, h, w]`` input."""
    import cv2

    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3:
        shape = getattr(rgb, "shape", None)
        raise InputError(f"expected an RGB image array [H, W, 3], got {shape if shape is not None else type(rgb)}")
    h, w = target_size(metadata, size)
    image = rgb.astype(np.float32) / 255.0 if rgb.dtype == np.uint8 else rgb.astype(np.float32)
    if image.shape[:2] != (h, w):
        shrink = image.shape[0] > h or image.shape[1] > w
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    image = (image - np.asarray(metadata.mean, np.float32)) / np.asarray(metadata.std, np.float32)
    return np.ascontiguousarray(image.transpose(2, 0, 1))
