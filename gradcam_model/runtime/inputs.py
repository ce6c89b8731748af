"""What to explain: image files found in files and folders (with ImageFolder labels), and a class by index or name."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .._suggest import did_you_mean
from ..errors import InputError
from .images import IMAGE_SUFFIXES

__all__ = ["ImageInput", "collect_images", "resolve_class"]


@dataclass(frozen=True)
class ImageInput:
    """One image to explain: its file, a unique relative name for its outputs, its true label if known."""

    path: Path
    key: str
    label: str | None = None


def collect_images(inputs: Iterable[str | os.PathLike]) -> list[ImageInput]:
    """Image files as given, and the images in folders (recursively, sorted).

    In a folder laid out as ``root/<class>/.../image`` the true label is ``<class>``.
    Each input gets a unique ``key`` (relative path without suffix) naming its outputs.
    """
    found: list[ImageInput] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not files:
                raise InputError(f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            for file in files:
                rel = file.relative_to(path)
                label = rel.parts[0] if len(rel.parts) >= 2 else None
                found.append(ImageInput(file, str(Path(path.name or "input") / rel.with_suffix("")), label))
        elif path.exists():
            found.append(ImageInput(path, path.stem, None))
        else:
            raise InputError(f"input {path} does not exist")
    seen: dict[str, int] = {}
    unique = []
    for item in found:
        seen[item.key] = seen.get(item.key, 0) + 1
        n = seen[item.key]
        unique.append(item if n == 1 else ImageInput(item.path, f"{item.key}-{n}", item.label))
    return unique


def resolve_class(value: int | str, metadata) -> int:
    """A class index from an index or a class name (case-insensitive); ``-1`` is the top prediction."""
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            names = list(metadata.class_names or ())
            lowered = [n.lower() for n in names]
            if value.lower() in lowered:
                return names.index(value) if value in names else lowered.index(value.lower())
            if not names:
                raise InputError(f"class {value!r}: this artifact has no class names; give a class index") from None
            hint = did_you_mean(value, names)
            raise InputError(f"class {value!r} is not a class of this artifact{hint}") from None
    if not -1 <= value < metadata.num_classes:
        raise InputError(f"class {value} is out of range; expected 0..{metadata.num_classes - 1} or -1 (top class)")
    return value
