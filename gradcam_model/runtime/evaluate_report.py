"""What ``gradcam evaluate`` writes: evaluation.csv, summary.md (how to read it), summary.json and the plots."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from .._atomic import write_bytes_atomic
from .plots import curve_plot, mean_curve_plot
from .visualize import save_png

__all__ = ["CURVE_LABELS", "READING", "evaluation_dict", "summary_markdown", "write_evaluation"]

# curve -> the x axis label of its plot
CURVE_LABELS = {
    "deletion": "fraction of pixels deleted (most salient first)",
    "insertion": "fraction of pixels inserted (most salient first)",
    "road_morf": "fraction of pixels removed and imputed (most relevant first)",
    "road_lerf": "fraction of pixels removed and imputed (least relevant first)",
}
_Y_LABEL = "probability of the explained class"

# metric -> how to read it: direction, range, what a baseline means
READING = {
    "average_drop": "Average Drop: how much the class's probability falls when the image is multiplied by the "
    "map, relative to the original (0 = no drop, 1 = all of it); lower is better. A map that is 1 almost "
    "everywhere scores well without pointing at anything, so compare with the centre and inverted baselines.",
    "increase_in_confidence": "Increase in Confidence: the fraction of images whose probability rose when "
    "multiplied by the map (0 to 1); higher is better. Rare on natural photos: 0 on a few images is common.",
    "deletion": "Deletion AUC: the area under the probability as pixels are replaced by the substrate in map "
    "order (0 to 1); lower is better. Biases: deleting by blur or grey leaves map-shaped holes the model "
    "reads; pixel-order random deletion scatters holes everywhere and scores *better* than many real maps "
    "(the reason the random baseline here is smooth).",
    "insertion": "Insertion AUC: the area under the probability as pixels are revealed from the substrate in "
    "map order (0 to 1); higher is better. Substrate bias: a blurred object often still looks like itself, so "
    "with blur deletion AUCs come out higher and insertion starts high; the mean (grey) substrate is further "
    "from the image and gives lower values of both. Compare numbers only at the same substrate and steps, and "
    "read the margin over the baselines, not the value.",
    "road_morf": "ROAD MoRF: the mean change of the probability when the most relevant pixels are removed and "
    "imputed from their neighbours (negative: it fell); lower is better. Imputation avoids the holes' shape "
    "leaking the map (the ROAD paper's point).",
    "road_lerf": "ROAD LeRF: the same, removing the least relevant pixels first; higher (closer to 0) is better.",
    "road_combined": "ROAD combined: (LeRF - MoRF) / 2; higher is better, 0 means the map orders nothing.",
    "pointing_game": "Pointing game: the fraction of images whose map maximum lies within the tolerance of an "
    "object box (0 to 1); higher is better. The centre baseline scores well on centred photos.",
}


def _write_text(path: Path, text: str) -> Path:
    write_bytes_atomic(path, text.encode("utf-8"), overwrite=True)
    return path


def _finite_or_none(value: float) -> float | None:
    return round(float(value), 6) if math.isfinite(value) else None


def _x_values(evaluation, name: str) -> np.ndarray | None:
    """The x axis of a curve: evenly spaced for deletion/insertion, ``1 - p/100`` for ROAD."""
    if name.startswith("road_"):
        return 1.0 - np.asarray(evaluation.percentiles) / 100.0
    return None


def _mean_curves(curves) -> dict:
    """Curve -> its mean over the images where every point is finite (ROAD: NaN rows left out)."""
    out = {}
    for name, c in curves.items():
        finite = c[np.isfinite(c).all(axis=1)]
        out[name] = [_finite_or_none(p) for p in finite.mean(axis=0)] if len(finite) else None
    return out


def evaluation_dict(evaluation) -> dict:
    """Everything :meth:`Evaluation.to_json` writes."""
    meta = evaluation.metadata
    return {
        "artifact": {"architecture": meta.architecture, "method": meta.method, "target_layer": meta.target_layer},
        "images": len(evaluation.names),
        "errors": dict(evaluation.errors),
        "steps": evaluation.steps,
        "substrate": evaluation.baseline,
        "road_percentiles": list(evaluation.percentiles),
        "pointing_tolerance": evaluation.pointing_tolerance,
        "summary": {m: _finite_or_none(v) for m, v in evaluation.summary().items()},
        "counts": dict(evaluation.counts),
        "baselines": {
            b: {m: _finite_or_none(v) for m, v in s.items()} for b, s in evaluation.baseline_summary().items()
        },
        "random_grid": None if evaluation.random_grid is None else list(evaluation.random_grid),
        "margins": [
            {
                "metric": g.metric,
                "best_baseline": g.best_baseline,
                "margin": round(g.margin, 6),
                "ci95": [round(g.low, 6), round(g.high, 6)],
                "images": g.images,
                "verdict": g.verdict,
            }
            for g in evaluation.margins()
        ],  # fmt: skip
        "mean_curves": _mean_curves(evaluation.curves),
        "baseline_mean_curves": {b: _mean_curves(c) for b, c in evaluation.baseline_curves.items()},
    }


def summary_markdown(evaluation) -> str:
    """The table (method and baselines side by side, margin, verdict) and how to read each metric."""
    from .evaluate import BETTER, TITLES

    meta = evaluation.metadata
    baselines = evaluation.baseline_summary()
    margins = {g.metric: g for g in evaluation.margins()}
    head = (
        f"{meta.architecture} {meta.method} at `{meta.target_layer}`: {len(evaluation.names)} images"
        f"{f' ({len(evaluation.errors)} unreadable, listed in evaluation.csv)' if evaluation.errors else ''}"
    )
    if "deletion" in evaluation.curves or "insertion" in evaluation.curves:
        head += f", {evaluation.steps} deletion/insertion steps, {evaluation.baseline} substrate"
    if "road_morf" in evaluation.curves or "road_lerf" in evaluation.curves:
        head += ", ROAD percentiles " + ",".join(f"{p:g}" for p in evaluation.percentiles)
    columns = ["metric", "better", meta.method, *baselines]
    lines = [head, ""]
    if margins:
        columns += ["margin over best baseline [95% CI]", "verdict"]
    lines += ["| " + " | ".join(columns) + " |", "|---|---|" + "---:|" * (1 + len(baselines))]
    lines[-1] += "---|---|" if margins else ""
    for metric, value in evaluation.summary().items():
        cells = [TITLES[metric], BETTER[metric], f"{value:.4f}"]
        cells += [f"{baselines[b].get(metric, math.nan):.4f}" for b in baselines]
        if margins:
            g = margins.get(metric)
            cells += ["-", "-"] if g is None else [
                f"{g.margin:+.4f} [{g.low:+.4f}, {g.high:+.4f}] vs {g.best_baseline}", g.verdict
            ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Images scored per metric: " + ", ".join(f"{TITLES[m]} {n}" for m, n in evaluation.counts.items())]
    lines += ["", "## How to read it", ""]
    if baselines:
        lines.append(
            "Baselines are maps that know nothing about the model, scored the same way on the same images: "
            "`random` (smooth noise on the grid the method's maps come from, upsampled like them, "
            "averaged over draws), `centre` (a centred Gaussian), `inverted` (1 - the method's map). The margin "
            "is the method's mean minus the best baseline's, signed so that positive means better, with a "
            "bootstrap 95% interval over the images; a method is *better than every baseline* when the whole "
            "interval is above 0, *worse* when below, else *not distinguishable*."
        )
        lines.append("")
    lines += [f"- {READING[m]}" for m in evaluation.summary()]
    lines += [
        "",
        "The plots: `<curve>.png` shows each map's mean curve with a shaded 95% interval of the mean "
        "(mean +- 1.96 standard errors over the images), `<curve>_images.png` one faint line per image.",
    ]
    return "\n".join(lines) + "\n"


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
        score = summary.get(name)
        scored = f"AUC {score:.3f}, " if name in ("deletion", "insertion") and score is not None else ""
        title = f"{name}: {meta.method} at {meta.target_layer}, {scored}{len(curves)} images"
        series = {meta.method: curves}
        series.update({b: c[name] for b, c in evaluation.baseline_curves.items() if name in c})
        xs = _x_values(evaluation, name)
        if xs is not None:  # ROAD: start every curve at the unperturbed image (nothing removed)
            order = np.argsort(xs)
            xs = np.concatenate([[0.0], xs[order]])
            series = {k: np.column_stack([evaluation.probabilities, v[:, order]]) for k, v in series.items()}
            curves = series[meta.method]
        picture = mean_curve_plot(series, title=title, xlabel=CURVE_LABELS[name], ylabel=_Y_LABEL, xs=xs)
        written.append(save_png(out / f"{name}.png", picture))
        picture = curve_plot(curves, title=f"{title}, one line each", xlabel=CURVE_LABELS[name], ylabel=_Y_LABEL,
                             xs=xs, size=(400, 560))  # fmt: skip
        written.append(save_png(out / f"{name}_images.png", picture))
    return written
