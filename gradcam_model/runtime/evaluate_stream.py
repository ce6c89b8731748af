"""How ``gradcam evaluate`` reads its images: in chunks, decoded by a small pool ahead of the artifact runs."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import numpy as np

from ..errors import InputError

__all__ = ["CHUNK_IMAGES", "chunks", "inputs", "progress_bar"]

CHUNK_IMAGES = 8  # images decoded and scored together


def chunks(images, names, meta) -> Iterator[tuple[list[str], np.ndarray | None, dict[str, str]]]:
    """``(names, [n, C, H, W], errors)`` of ``CHUNK_IMAGES`` images at a time; files decoded by a small pool."""
    if isinstance(images, np.ndarray):
        for start in range(0, len(images), CHUNK_IMAGES):
            yield names[start : start + CHUNK_IMAGES], images[start : start + CHUNK_IMAGES], {}
        return
    from concurrent.futures import ThreadPoolExecutor

    from .images import load_image, preprocess

    def decode(item):
        try:
            return preprocess(load_image(item.path), meta)
        except InputError as exc:
            return str(exc)

    with ThreadPoolExecutor(2, thread_name_prefix="gradcam-evaluate") as pool:
        decoded = pool.map(decode, images)  # reads ahead of the artifact runs
        for start in range(0, len(images), CHUNK_IMAGES):
            part = [next(decoded) for _ in images[start : start + CHUNK_IMAGES]]
            good = [
                (n, x) for n, x in zip(names[start : start + CHUNK_IMAGES], part, strict=True) if not isinstance(x, str)
            ]
            errors = {
                n: x for n, x in zip(names[start : start + CHUNK_IMAGES], part, strict=True) if isinstance(x, str)
            }
            array = np.stack([x for _, x in good]) if good else None
            yield [n for n, _ in good], array, errors


def inputs(images, names, explainer):
    """(images: an array or ImageInputs, names); image names keep their file extension."""
    from .inputs import ImageInput

    if isinstance(images, (str, os.PathLike)) or (
        isinstance(images, (list, tuple)) and images and all(isinstance(p, (str, os.PathLike)) for p in images)
    ):
        from .inputs import collect_images

        images = collect_images([images] if isinstance(images, (str, os.PathLike)) else images)
    if isinstance(images, (list, tuple)) and images and all(isinstance(p, ImageInput) for p in images):
        from .boxes import image_names

        items = list(images)
        return items, image_names(items) if names is None else [str(x) for x in names]
    array = explainer.check_images(images)
    return array, [str(i) for i in range(len(array))] if names is None else [str(x) for x in names]


class progress_bar:
    """A tqdm bar on stderr counting images run through the artifact, or nothing."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="img", desc="evaluate", file=sys.stderr, dynamic_ncols=True)

    def __enter__(self):
        return self

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
