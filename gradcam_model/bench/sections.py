"""What the side benchmarks (``gradcam bench --pipeline``, ``--serve``, ``--ray``) share.

Their inputs: generated photo-like JPEGs and an artifact (the caller's, or
EfficientNet-Lite0 exported into the work folder), in a work folder that is kept
with ``--workdir`` and removed otherwise; the options that say so; and where the
results go (``--json``, and ``--markdown``: the section's marked part of
docs/benchmarks.md, :func:`gradcam_model.bench.report.update_section`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import tempfile
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .report import update_section

__all__ = [
    "add_input_arguments",
    "add_output_arguments",
    "default_artifact",
    "generate_jpegs",
    "inputs",
    "machine",
    "write",
]


def machine() -> str:
    """The machine a section ran on, in its report's words."""
    return f"{platform.machine()}, {os.cpu_count()} logical cores, Python {platform.python_version()}"


def generate_jpegs(folder: Path, count: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """``count`` photo-like JPEGs (smooth colour fields plus noise), ``size`` = (width, height)."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    paths = []
    for i in range(count):
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        image = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
        noise = rng.integers(-12, 13, (h, w, 3), dtype=np.int16)
        image = np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        path = folder / f"img{i:05d}.jpg"
        cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths


def default_artifact(workdir: Path) -> Path:
    """EfficientNet-Lite0 (ImageNet weights, offline) at ``bn2``, exported once into ``workdir``."""
    path = workdir / "efficientnet_lite0.onnx"
    if path.exists():
        return path
    import torch

    from ..export import export_onnx
    from ..graph.wrapper import GradCAMModel
    from ..models import efficientnet_lite0_imagenet, imagenet_class_names

    wrapper = GradCAMModel(
        efficientnet_lite0_imagenet(),
        "bn2",
        example_input=torch.zeros(1, 3, 224, 224),
        class_names=imagenet_class_names(),
        architecture="timm:efficientnet_lite0",
    )
    return export_onnx(wrapper, path)


def add_input_arguments(parser: argparse.ArgumentParser, *, images: int, kind: str = "") -> None:
    """``--artifact`` and ``--images N`` (default ``images``; ``kind`` says what kind of images)."""
    parser.add_argument("--artifact", metavar="FILE", help="an .onnx artifact (default: export EfficientNet-Lite0)")
    what = f"{kind} generated JPEGs".strip()
    parser.add_argument("--images", type=int, default=images, metavar="N", help=f"{what} (default: {images})")


def add_output_arguments(parser: argparse.ArgumentParser, *, kept: str) -> None:
    """``--workdir`` (keeping ``kept``), ``--json`` and ``--markdown``."""
    parser.add_argument("--workdir", metavar="DIR", help=f"keep {kept} in DIR")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    parser.add_argument("--markdown", metavar="FILE", help="write the section into FILE (docs/benchmarks.md)")


@contextlib.contextmanager
def inputs(args: argparse.Namespace, size: tuple[int, int], *, prefix: str) -> Iterator[tuple[Path, Path, list[Path]]]:
    """The work folder, the artifact and ``args.images`` JPEGs of ``size`` (width, height) in it."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        artifact = Path(args.artifact) if args.artifact else default_artifact(workdir)
        yield workdir, artifact, generate_jpegs(workdir / "images", args.images, size)


def write(args: argparse.Namespace, result, section: str) -> None:
    """The result (a dataclass) as JSON to ``--json``, ``section`` into ``--markdown``; each says where."""
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(result), indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.markdown:
        update_section(Path(args.markdown), section)
        print(f"wrote {args.markdown}")
