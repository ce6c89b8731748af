"""What ``gradcam evaluate`` writes: evaluation.csv, summary.md, summary.json, deletion.png, insertion.png."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from .._atomic import write_bytes_atomic
from .plots import curve_plot
from .visualize import save_png

__all__ = ["CURVE_LABELS", "write_evaluation"]

# curve -> the x axis label of its plot
CURVE_LABELS = {"deletion": "fraction of pixels deleted", "insertion": "fraction of pixels inserted"}


def _write_text(path: Path, text: str) -> Path:
    write_bytes_atomic(path, text.encode("utf-8"), overwrite=True)
    return path


def write_evaluation(evaluation, out: Path) -> list[Path]:
    """Write an :class:`~gradcam_model.runtime.evaluate.Evaluation` into folder ``out``, each file atomically."""
    rows = evaluation.rows()
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    written = [
        _write_text(out / "evaluation.csv", buffer.getvalue()),
        _write_text(out / "summary.md", evaluation.to_markdown()),
        _write_text(out / "summary.json", evaluation.to_json()),
    ]
    summary = evaluation.summary()
    meta = evaluation.metadata
    for name, curves in evaluation.curves.items():
        title = f"{name} {meta.method} at {meta.target_layer}: AUC {summary[name]:.3f}, {len(curves)} images"
        picture = curve_plot(curves, title=title, xlabel=CURVE_LABELS[name], ylabel="probability of the class")
        written.append(save_png(out / f"{name}.png", picture))
    return written
