"""What an explain run writes, shared by every engine: rows, predictions.csv, overlay names, grid.png.

The local engine (:func:`~gradcam_model.runtime.explain_files`) and the Ray engine
(:func:`~gradcam_model.runtime.explain_dataset`) both build their rows with
:func:`prediction_of`, name overlays with :func:`overlay_name` and write
``predictions.csv`` with :func:`write_csv`, so their outputs cannot drift apart.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._atomic import write_bytes_atomic
from .images import explained_region
from .visualize import caption, grid, save_png

__all__ = [
    "CSV_FIELDS",
    "GRID_LIMIT",
    "REGION_FIELDS",
    "ExplainSummary",
    "Prediction",
    "overlay_name",
    "prediction_of",
    "tile_caption",
    "tile_color",
    "write_csv",
    "write_grid",
]

# predictions.csv, in this order (the C++ runner writes the same columns)
CSV_FIELDS = (
    "path", "true_label", "predicted_index", "predicted_label", "probability",
    "explained_index", "explained_label", "explained_score",
    "region_x", "region_y", "region_w", "region_h", "overlay", "error",
)  # fmt: skip
REGION_FIELDS = CSV_FIELDS[8:12]  # the explained region (x, y, w, h) in the picture's pixels (explained_region)
GRID_LIMIT = 64  # tiles in grid.png; predictions.csv and the overlays cover every image


@dataclass(frozen=True)
class Prediction:
    """What happened to one image: the prediction and explained classes, or the error."""

    path: Path
    true_label: str | None
    predicted_index: int | None = None
    predicted_label: str = ""
    probability: float | None = None
    explained_index: tuple[int, ...] = ()
    explained_label: tuple[str, ...] = ()
    explained_score: tuple[float, ...] = ()
    region: tuple[float, float, float, float] | None = None  # what the maps cover, in the picture's pixels
    overlays: tuple[Path, ...] = ()
    error: str = ""

    def row(self) -> dict[str, str]:
        """The predictions.csv row (see :data:`CSV_FIELDS`)."""
        if self.error:
            return {**dict.fromkeys(CSV_FIELDS, ""), "path": str(self.path), "true_label": self.true_label or "",
                    "error": self.error}  # fmt: skip
        return {
            "path": str(self.path),
            "true_label": self.true_label or "",
            "predicted_index": str(self.predicted_index),
            "predicted_label": self.predicted_label,
            "probability": f"{self.probability:.6f}",
            "explained_index": ";".join(map(str, self.explained_index)),
            "explained_label": ";".join(self.explained_label),
            "explained_score": ";".join(f"{s:.6f}" for s in self.explained_score),
            **{k: "" if self.region is None else f"{v:.2f}" for k, v in zip(REGION_FIELDS, self.region or (0,) * 4)},
            "overlay": ";".join(str(p) for p in self.overlays),
            "error": "",
        }


@dataclass
class ExplainSummary:
    """What an explain run did. ``overlays_dir`` and ``grid`` are None when nothing was written."""

    predictions: list[Prediction]
    csv: Path
    overlays_dir: Path | None
    grid: Path | None
    provider: str
    seconds: float
    small_images: int = 0
    failures: list[Prediction] = field(default_factory=list)
    parquet: Path | None = None  # the Ray engine also writes predictions.parquet
    actor_seconds: float | None = None  # Ray engine: seconds the actors spent, summed over images
    actor_peak_mb: float | None = None  # Ray engine: the largest peak resident memory of an actor
    grid_tiles: int = 0  # pictures grid.png shows (the first GRID_LIMIT explained ones)
    resumed: int = 0  # images an interrupted run had finished (resume): skipped by this one
    report: Path | None = None  # report.html (runtime.report)

    @property
    def total(self) -> int:
        return len(self.predictions)

    @property
    def explained(self) -> int:
        return self.total - len(self.failures)


def overlay_name(key: str, k: int, ext: str) -> str:
    """The overlay file of explained class ``k`` (0-based) of the image whose outputs are named ``key``."""
    return f"{key}.{ext}" if k == 0 else f"{key}-top{k + 1}.{ext}"


def prediction_of(path: Path, true_label: str | None, result, j: int, meta, picture: tuple[int, ...]) -> Prediction:
    """The row of sample ``j`` of an :class:`~gradcam_model.runtime.Explanation` (overlays not yet written).

    ``picture`` is the shape of the decoded picture, for the region the maps cover.
    """
    top = int(result.probabilities[j].argmax())
    explained = tuple(int(c) for c in result.class_index[j])
    return Prediction(
        path,
        true_label,
        predicted_index=top,
        predicted_label=meta.label(top),
        probability=float(result.probabilities[j, top]),
        explained_index=explained,
        explained_label=tuple(meta.label(c) for c in explained),
        explained_score=tuple(float(s) for s in result.score[j]),
        region=tuple(float(v) for v in explained_region(picture, meta)),
    )


def _same_label(a: str, b: str) -> bool:
    def norm(s: str) -> str:
        return " ".join(s.lower().replace("_", " ").replace("-", " ").split())

    return norm(a) == norm(b)


def tile_caption(row: Prediction) -> str:
    """A grid.png cell's caption: file name, explained class and score, the top-1 when it differs."""
    title = caption(row.explained_label[0], row.explained_score[0], true_label=row.true_label)
    if row.explained_index[0] != row.predicted_index:
        title += f"\ntop-1: {row.predicted_label} {row.probability:.2f}"
    return f"{row.path.name}\n{title}"


def tile_color(row: Prediction) -> tuple[int, int, int] | None:
    """Green caption when the prediction matches the true label, red when not, default without a label."""
    if row.true_label is None:
        return None
    return (0, 140, 0) if _same_label(row.predicted_label, row.true_label) else (200, 0, 0)


def write_csv(predictions: list[Prediction], out: Path) -> Path:
    """Write ``out/predictions.csv`` atomically, one row per prediction in the given order."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(p.row() for p in predictions)
    path = out / "predictions.csv"
    write_bytes_atomic(path, buffer.getvalue().encode("utf-8"), overwrite=True)
    return path


def write_grid(tiles: list[tuple[np.ndarray, str, tuple[int, int, int] | None]], out: Path, tile: int) -> Path | None:
    """Write ``out/grid.png`` from ``(thumbnail, caption, color)`` tiles; None when there are none."""
    if not tiles:
        return None
    pictures = [t[0] for t in tiles]
    aspect = float(np.median([p.shape[0] / p.shape[1] for p in pictures]))  # cells shaped like most
    cell = (int(np.clip(round(tile * aspect), tile // 2, tile * 3 // 2)), tile)
    picture = grid(pictures, [t[1] for t in tiles], cols=min(4, len(pictures)), tile_size=cell,
                   colors=[t[2] for t in tiles])  # fmt: skip
    return save_png(out / "grid.png", picture)
