"""Object boxes for the pointing game: the box CSV, its mapping to the input size, and the inputs it names.

A box CSV has the header ``image,x0,y0,x1,y1`` and one row per box (several rows per
image allowed). ``image`` names an input file: its path as given or found in a folder,
its output key (relative path without suffix), or its file name or stem when unique.
Coordinates are pixel edges in the ORIGINAL picture (``0 <= x0 < x1 <= width``): the
box of pixel columns ``x0 .. x1 - 1``. The input shows the picture's explained region
(:func:`~gradcam_model.runtime.explained_region`: all of it for a stretch, the centre
crop otherwise), so a box maps to the input by moving it to the region's corner and
scaling by ``input size / region size``; the part of a box outside the crop is cut off,
and a box wholly outside it is an error (the model never saw that object).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .._suggest import did_you_mean
from ..contract import ArtifactMetadata
from ..errors import InputError
from .images import explained_region, load_image, preprocess
from .inputs import ImageInput

__all__ = ["BOX_FIELDS", "Box", "check_boxes", "image_names", "load_inputs", "read_boxes"]

Box = tuple[float, float, float, float]  # x0, y0, x1, y1
BOX_FIELDS = ("image", "x0", "y0", "x1", "y1")


def image_names(items: Sequence[ImageInput]) -> list[str]:
    """How evaluate names each input: its key with the file's extension (``photos/cat.png``), unique.

    The key is the relative path without the suffix (``photos/cat``, or ``photos/cat-2`` for a
    repeated one); the name puts the suffix back, so the CSV shows the file a reader can open.
    """
    names, seen = [], set()
    for item in items:
        name = item.key + item.path.suffix
        n = 2
        while name in seen:
            name, n = f"{item.key}-{n}{item.path.suffix}", n + 1
        seen.add(name)
        names.append(name)
    return names


def load_inputs(items: Sequence[ImageInput], metadata: ArtifactMetadata) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Decode and preprocess image files: the ``[N, C, H, W]`` input and each picture's original ``(H, W)``.

    Pictures are decoded at full resolution, so that box coordinates keep their meaning.
    """
    if not items:
        raise InputError("no images to evaluate")
    arrays, sizes = [], []
    for item in items:
        rgb = load_image(item.path)
        sizes.append((int(rgb.shape[0]), int(rgb.shape[1])))
        arrays.append(preprocess(rgb, metadata))
    return np.stack(arrays), sizes


def _box(values, where: str) -> Box:
    try:
        x0, y0, x1, y1 = (float(v) for v in values)
    except (TypeError, ValueError):
        raise InputError(f"{where}: a box is four numbers x0, y0, x1, y1, got {values!r}") from None
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or not (x0 < x1 and y0 < y1):
        raise InputError(
            f"{where}: box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is empty or not finite; expected x0 < x1, y0 < y1"
        )
    return x0, y0, x1, y1


def check_boxes(boxes: Mapping[str, Sequence] | Sequence[Sequence], names: Sequence[str]) -> list[list[Box]]:
    """Boxes by image name (a mapping) or per image (a list of N lists) as one list of boxes per image."""
    if isinstance(boxes, Mapping):
        unknown = [key for key in boxes if str(key) not in names]
        if unknown:
            hint = did_you_mean(str(unknown[0]), list(names))
            raise InputError(f"boxes name image {str(unknown[0])!r}, which is not among the {len(names)} inputs{hint}")
        per_image = [boxes.get(name, ()) for name in names]
    elif isinstance(boxes, Sequence) and not isinstance(boxes, (str, bytes)):
        if len(boxes) != len(names):
            raise InputError(f"got boxes for {len(boxes)} images and {len(names)} images; give one list per image")
        per_image = list(boxes)
    else:
        raise InputError(
            f"boxes must map image names to lists of boxes, or hold one list per image; got {type(boxes).__name__}"
        )
    return [
        [_box(b, f"boxes of {name!r}") for b in (image_boxes or ())]
        for name, image_boxes in zip(names, per_image, strict=True)
    ]


def _index(items: Sequence[ImageInput], names: Sequence[str]) -> dict[str, int]:
    """Every way a CSV row may name an input -> its position; file names and stems only when unique."""
    index: dict[str, int] = {}
    short: dict[str, set[int]] = {}
    for i, item in enumerate(items):
        short.setdefault(item.path.name, set()).add(i)
        short.setdefault(item.path.stem, set()).add(i)
    index.update({name: where.pop() for name, where in short.items() if len(where) == 1})
    for i, item in enumerate(items):
        index[str(item.path)] = i
        index[item.path.as_posix()] = i
        index[item.key] = i
        index[names[i]] = i
    return index


def read_boxes(
    path: str | os.PathLike,
    items: Sequence[ImageInput],
    sizes: Sequence[tuple[int, int]],
    input_size: tuple[int, int],
    metadata: ArtifactMetadata | None = None,
) -> dict[str, list[Box]]:
    """Read a box CSV (see the module docstring): image name (:func:`image_names`) -> boxes in input pixels.

    Raises:
        InputError: an unreadable file, a wrong header, a malformed row, or a row naming no input.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        reason = "no such file" if not path.exists() else getattr(exc, "strerror", None) or str(exc)
        raise InputError(f"box file {path}: {reason}") from None
    reader = csv.reader(text.splitlines())
    header = [h.strip().lower() for h in next(reader, [])]
    if tuple(header) != BOX_FIELDS:
        raise InputError(
            f"box file {path}: the header must be {','.join(BOX_FIELDS)}, got {','.join(header) or 'nothing'}"
        )
    names = image_names(items)
    index = _index(items, names)
    h_in, w_in = int(input_size[0]), int(input_size[1])
    found: dict[str, list[Box]] = {}
    for line, row in enumerate(reader, start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        where = f"box file {path} line {line}"
        if len(row) != len(BOX_FIELDS):
            raise InputError(f"{where}: expected {len(BOX_FIELDS)} fields ({','.join(BOX_FIELDS)}), got {len(row)}")
        name = row[0].strip()
        if name not in index:
            hint = did_you_mean(name, names)
            raise InputError(f"{where}: image {name!r} is not among the {len(items)} inputs{hint}")
        i = index[name]
        height, width = sizes[i]
        x0, y0, x1, y1 = _box(row[1:], where)
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            raise InputError(f"{where}: box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies outside the {width}x{height} picture")
        rx, ry, rw, rh = (0.0, 0.0, float(width), float(height))
        if metadata is not None:
            rx, ry, rw, rh = explained_region((height, width), metadata, (h_in, w_in))
        sx, sy = w_in / rw, h_in / rh
        box = (
            min(max((x0 - rx) * sx, 0.0), w_in),
            min(max((y0 - ry) * sy, 0.0), h_in),
            min(max((x1 - rx) * sx, 0.0), w_in),
            min(max((y1 - ry) * sy, 0.0), h_in),
        )
        if not (box[0] < box[2] and box[1] < box[3]):
            raise InputError(
                f"{where}: box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies outside the region the model sees "
                f"(x {rx:.0f}..{rx + rw:.0f}, y {ry:.0f}..{ry + rh:.0f}: the artifact's centre crop)"
            )
        found.setdefault(names[i], []).append(box)
    if not found:
        raise InputError(f"box file {path} holds no boxes")
    return found
