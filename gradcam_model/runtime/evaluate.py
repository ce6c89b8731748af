"""Score an artifact's own maps: Average Drop, Increase in Confidence, deletion/insertion AUC, pointing game.

Every perturbed image goes through the same artifact, in batches; numpy, ONNX Runtime
and OpenCV only. The explained class ``c`` of image ``x`` is the artifact's top class
(``k = 0``), or the class given to a class-input artifact; its map ``M`` is the
artifact's ``cam[:, 0]`` (upsampled to the input size and min-max normalized to
``[0, 1]``, as the contract says). ``Y_c = p_c(x)`` is the artifact's ``probabilities``
output for that class; every metric reads the probability of the same class ``c``.

Definitions, per image (:meth:`Evaluation.summary` averages them over the images):

- **Average Drop** (Chattopadhyay et al. 2018, Grad-CAM++, arXiv:1710.11063):
  ``max(0, Y_c - O_c) / Y_c`` with ``O_c = p_c(x * M)``, the explanation map being the
  *normalized* input times the map, as torch-cam's ``ClassificationMetric`` and
  pytorch-grad-cam's ``CamMultImageConfidenceChange`` compute it. A fraction in
  ``[0, 1]``, as in torch-cam's published table (the paper prints it times 100);
  torch-cam divides by ``Y_c + 1e-7``, we by ``Y_c`` (NaN when ``Y_c`` is 0).
  Lower is better.
- **Increase in Confidence** (same paper): ``1`` if ``O_c > Y_c`` else ``0``; the mean is
  the fraction of images whose confidence rose. Higher is better.
- **Deletion** and **insertion** (Petsiuk et al. 2018, RISE, arXiv:1806.07421): pixels
  are ranked by ``M``, descending, ties in raster order (a stable sort); at step
  ``s = 0..S`` the first ``n_s = floor(s * H * W / S)`` pixels (all channels) are
  replaced by the baseline (deletion, starting from ``x``) or revealed from ``x``
  (insertion, starting from the baseline). The curve is ``p_c`` at each step; the
  score is its area by the trapezoid rule over the fraction axis ``s / S`` in ``[0, 1]``.
  Deletion: lower is better; insertion: higher is better. Baselines, in the
  normalized input space at the artifact's input size: ``blur`` (RISE's substrate: a
  Gaussian blur of ``x``, 11x11 kernel, sigma 5, OpenCV's reflected border) or ``mean``
  (the dataset mean colour of the artifact's metadata, i.e. 0 after normalization:
  RISE's deletion substrate).
- **Pointing game** (Zhang et al. 2016, Excitation Backprop, arXiv:1608.00507): a hit
  (1) when the centre of the map's maximum pixel (the first in raster order) lies
  within ``tolerance`` pixels (Euclidean, default 15, in input pixels) of one of the
  image's boxes, else a miss (0); only for images that have boxes (NaN otherwise).
  A constant map (all zeros, say) points nowhere and counts as a miss.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..contract import ArtifactMetadata
from ..errors import ArtifactError, InputError
from .boxes import Box, check_boxes, load_inputs
from .explainer import Explainer, load_explainer

__all__ = ["BASELINES", "METRICS", "Evaluation", "evaluate"]

METRICS = ("average_drop", "increase_in_confidence", "deletion", "insertion", "pointing_game")
BASELINES = ("blur", "mean")
DEFAULT_STEPS = 50
DEFAULT_BATCH_SIZE = 16
POINTING_TOLERANCE = 15.0  # pixels, Zhang et al.'s tolerance
BLUR_KERNEL, BLUR_SIGMA = 11, 5.0  # RISE's blurred substrate
_BETTER = {"average_drop": "lower", "increase_in_confidence": "higher", "deletion": "lower", "insertion": "higher",
           "pointing_game": "higher"}  # fmt: skip
_TITLES = {"average_drop": "Average Drop", "increase_in_confidence": "Increase in Confidence",
           "deletion": "Deletion AUC", "insertion": "Insertion AUC", "pointing_game": "Pointing game"}  # fmt: skip
_MAP, _DELETE, _INSERT = 0, 1, 2  # kinds of perturbed images


@dataclass(frozen=True, eq=False)
class Evaluation:
    """Per-image scores of one artifact's maps; :meth:`summary` averages them, :meth:`write` saves them."""

    names: list[str]  # one per image
    classes: np.ndarray  # [N] the explained class
    scores: dict[str, np.ndarray]  # metric -> [N]; NaN where it does not apply
    curves: dict[str, np.ndarray]  # "deletion"/"insertion" -> [N, steps + 1] probabilities of the class
    metadata: ArtifactMetadata
    probabilities: np.ndarray  # [N] Y_c: the class's probability on the unperturbed image
    constant_maps: np.ndarray  # [N] bool: the map has one value everywhere (no ranking, no maximum)
    steps: int
    baseline: str
    pointing_tolerance: float = POINTING_TOLERANCE
    counts: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "counts", {m: int(np.isfinite(v).sum()) for m, v in self.scores.items()})

    def summary(self) -> dict[str, float]:
        """Metric -> mean over the images it applies to (NaN when none)."""
        return {m: float(np.mean(v[np.isfinite(v)])) if self.counts[m] else math.nan for m, v in self.scores.items()}

    def to_dict(self) -> dict:
        meta = self.metadata
        return {
            "artifact": {"architecture": meta.architecture, "method": meta.method, "target_layer": meta.target_layer},
            "images": len(self.names),
            "steps": self.steps,
            "baseline": self.baseline,
            "pointing_tolerance": self.pointing_tolerance,
            "summary": {m: _finite_or_none(v) for m, v in self.summary().items()},
            "counts": dict(self.counts),
            "mean_curves": {k: [round(float(p), 6) for p in c.mean(axis=0)] for k, c in self.curves.items()},
        }

    def to_json(self) -> str:
        """The summary as JSON (NaN written as null)."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def to_markdown(self) -> str:
        """The summary as a Markdown table: metric, mean, images scored, which direction is better."""
        meta = self.metadata
        lines = [
            f"{meta.architecture} {meta.method} at `{meta.target_layer}`: {len(self.names)} images, "
            f"{self.steps} steps, {self.baseline} baseline",
            "",
            "| metric | mean | images | better |",
            "|---|---:|---:|---|",
        ]
        for metric, value in self.summary().items():
            lines.append(f"| {_TITLES[metric]} | {value:.4f} | {self.counts[metric]} | {_BETTER[metric]} |")
        return "\n".join(lines) + "\n"

    def rows(self) -> list[dict[str, str]]:
        """One CSV row per image: name, class, probability, constant map, each metric (empty for NaN)."""
        rows = []
        for i, name in enumerate(self.names):
            c = int(self.classes[i])
            row = {
                "image": name,
                "class_index": str(c),
                "class_label": self.metadata.label(c),
                "probability": f"{self.probabilities[i]:.6f}",
                "constant_map": str(bool(self.constant_maps[i])),
            }
            row.update({m: "" if not np.isfinite(v[i]) else f"{v[i]:.6f}" for m, v in self.scores.items()})
            rows.append(row)
        return rows

    def write(self, out_dir: str | os.PathLike) -> list[Path]:
        """Write ``evaluation.csv``, ``summary.md``, ``summary.json`` and ``deletion.png``/``insertion.png``.

        Each file atomically; returns the paths written.
        """
        from .evaluate_report import write_evaluation

        return write_evaluation(self, Path(out_dir))


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _check_options(metrics, steps, baseline, batch_size, boxes, tolerance) -> tuple[str, ...]:
    if metrics is None:
        chosen = tuple(m for m in METRICS if m != "pointing_game" or boxes is not None)
    else:
        chosen = (metrics,) if isinstance(metrics, str) else tuple(metrics)
        unknown = [m for m in chosen if m not in METRICS]
        if unknown or not chosen:
            raise InputError(f"unknown metric(s) {unknown or chosen!r}; expected some of: {', '.join(METRICS)}")
        if "pointing_game" in chosen and boxes is None:
            raise InputError("the pointing game needs object boxes (boxes=..., CLI: --boxes CSV)")
        chosen = tuple(m for m in METRICS if m in chosen)  # canonical order, no repeats
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    if baseline not in BASELINES:
        raise InputError(f"unknown baseline {baseline!r}; expected one of: {', '.join(BASELINES)}")
    if not (isinstance(tolerance, (int, float)) and tolerance >= 0):
        raise InputError(f"pointing_tolerance must be a number >= 0, got {tolerance!r}")
    return chosen


def _explained(explainer: Explainer, images: np.ndarray, target, batch_size: int, bar):
    """The first pass: ``Y_c``, the classes and the maps of every image."""
    meta = explainer.metadata
    if not (meta.upsample and meta.normalize):
        raise ArtifactError(
            f"{explainer.path} returns raw maps (exported with upsample/normalize off); the metrics need maps at "
            "the input size in [0, 1]: export it with the defaults"
        )
    probs, classes, maps = [], [], []
    for start in range(0, len(images), batch_size):
        part = slice(start, start + batch_size)
        result = explainer(images[part], None if target is None else target[part])
        p = _probabilities(result.probabilities, len(images[part]), meta, explainer)
        c = np.asarray(result.class_index)[:, 0].astype(np.int64)
        probs.append(p[np.arange(len(c)), c])
        classes.append(c)
        maps.append(np.asarray(result.cam, dtype=np.float32)[:, 0])
        bar.update(len(c))
    return np.concatenate(probs), np.concatenate(classes), np.concatenate(maps)


def _probabilities(value, batch: int, meta: ArtifactMetadata, explainer: Explainer) -> np.ndarray:
    array = None if value is None else np.asarray(value)
    if array is None or array.shape != (batch, meta.num_classes) or not np.isfinite(array).all():
        shape = None if array is None else array.shape
        raise ArtifactError(
            f"{explainer.path} returns no class probabilities (got {shape}, expected [{batch}, {meta.num_classes}] "
            "finite values in its 'probabilities' output); evaluate needs them: export it with gradcam_model"
        )
    return array.astype(np.float64)


def _baseline(image: np.ndarray, kind: str) -> np.ndarray:
    if kind == "mean":
        return np.zeros_like(image)  # the dataset mean colour, normalized
    import cv2

    return np.stack([cv2.GaussianBlur(ch, (BLUR_KERNEL, BLUR_KERNEL), BLUR_SIGMA) for ch in image])


def _ranks(cam: np.ndarray) -> np.ndarray:
    """Rank of each pixel by map value, descending, ties in raster order: ``[H, W]`` int."""
    order = np.argsort(-cam.ravel(), kind="stable")
    ranks = np.empty(order.size, dtype=np.int64)
    ranks[order] = np.arange(order.size)
    return ranks.reshape(cam.shape)


def _perturbation_jobs(n_images: int, steps: int, chosen: tuple[str, ...]) -> list[tuple[int, int, int]]:
    """``(image, kind, step)`` of each perturbed image to run; the unperturbed image is never rerun.

    Deletion's last step and insertion's first are both the baseline: run once, as a deletion.
    """
    jobs = []
    for i in range(n_images):
        if "average_drop" in chosen or "increase_in_confidence" in chosen:
            jobs.append((i, _MAP, 0))
        if "deletion" in chosen or "insertion" in chosen:
            jobs.append((i, _DELETE, steps))
        if "deletion" in chosen:
            jobs.extend((i, _DELETE, s) for s in range(1, steps))
        if "insertion" in chosen:
            jobs.extend((i, _INSERT, s) for s in range(1, steps))
    return jobs


def _perturbed(job, image: np.ndarray, cam: np.ndarray, prepared, steps: int) -> np.ndarray:
    _, kind, step = job
    if kind == _MAP:
        return image * cam[None]
    base, ranks = prepared
    revealed = ranks < (step * ranks.size) // steps  # the first n_s pixels of the ranking
    if kind == _DELETE:
        return np.where(revealed[None], base, image)
    return np.where(revealed[None], image, base)


def evaluate(
    artifact: Explainer | str | os.PathLike,
    images,
    *,
    metrics: Sequence[str] | None = None,
    steps: int = DEFAULT_STEPS,
    baseline: str = "blur",
    batch_size: int = DEFAULT_BATCH_SIZE,
    boxes: Mapping[str, Sequence[Box]] | Sequence[Sequence[Box]] | None = None,
    class_index=None,
    progress: bool = False,
    names: Sequence[str] | None = None,
    pointing_tolerance: float = POINTING_TOLERANCE,
) -> Evaluation:
    """Score the artifact's maps of ``images`` (see the module docstring for each definition).

    Args:
        artifact: an artifact file or a loaded :class:`Explainer`.
        images: float32 ``[N, C, H, W]`` already normalized (what an Explainer takes), or
            image files and folders (loaded and preprocessed from the artifact's metadata;
            names are :func:`collect_images` keys).
        metrics: some of :data:`METRICS` (default: all; the pointing game only with ``boxes``).
        steps: deletion/insertion steps ``S`` (curves have ``S + 1`` points).
        baseline: ``"blur"`` or ``"mean"`` (see the module docstring).
        batch_size: images per artifact call, perturbed images of all images mixed.
        boxes: object boxes ``(x0, y0, x1, y1)`` in input pixels (the artifact's input size,
            edges: pixel ``(col j, row i)`` has centre ``(j + 0.5, i + 0.5)``), by image name or
            one list per image; images without boxes get NaN for the pointing game.
        class_index: class-input artifacts only: one class or ``[N]`` (``-1``: the top class).
        progress: show a tqdm bar on stderr.
        names: one per image (default: the keys of files, ``"0"``, ``"1"``, ... for arrays).
        pointing_tolerance: pointing-game tolerance in input pixels.

    Raises:
        InputError: bad images, options, classes or boxes.
        ArtifactError: the artifact gives no class probabilities or only raw maps.
    """
    chosen = _check_options(metrics, steps, baseline, batch_size, boxes, pointing_tolerance)
    explainer = artifact if isinstance(artifact, Explainer) else load_explainer(artifact)
    meta = explainer.metadata
    if isinstance(images, (str, os.PathLike)) or (
        isinstance(images, (list, tuple)) and images and all(isinstance(p, (str, os.PathLike)) for p in images)
    ):
        from .inputs import collect_images

        items = collect_images([images] if isinstance(images, (str, os.PathLike)) else images)
        array, _ = load_inputs(items, meta)
        names = [item.key for item in items] if names is None else names
    else:
        array = explainer.check_images(images)
    n = len(array)
    names = [str(i) for i in range(n)] if names is None else [str(x) for x in names]
    if len(names) != n:
        raise InputError(f"got {len(names)} names for {n} images; give one each")
    target = explainer.check_class_index(class_index, n)
    per_image_boxes = check_boxes(boxes, names) if "pointing_game" in chosen else None
    jobs = _perturbation_jobs(n, steps, chosen)
    with _progress(n + len(jobs), progress) as bar:
        y, classes, maps = _explained(explainer, array, target, batch_size, bar)
        probs = _run_jobs(explainer, jobs, array, maps, classes, baseline, steps, batch_size, bar)
    constant = maps.reshape(n, -1).max(axis=1) == maps.reshape(n, -1).min(axis=1)
    scores, curves = _scores(chosen, jobs, probs, y, steps, n)
    if per_image_boxes is not None:
        scores["pointing_game"] = _pointing(maps, constant, per_image_boxes, float(pointing_tolerance))
    return Evaluation(
        names=names,
        classes=classes,
        scores=scores,
        curves=curves,
        metadata=meta,
        probabilities=y,
        constant_maps=constant,
        steps=int(steps),
        baseline=baseline,
        pointing_tolerance=float(pointing_tolerance),
    )


def _run_jobs(explainer, jobs, images, maps, classes, baseline, steps, batch_size, bar) -> np.ndarray:
    """``p_c`` of every perturbed image, ``batch_size`` at a time, built just before its batch runs.

    An image's jobs are contiguous, so its baseline and pixel ranking are kept only while
    its jobs run: memory beyond the images does not grow with their number.
    """
    class_input = explainer.metadata.class_input
    prepared: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    out = np.empty(len(jobs), dtype=np.float64)
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start : start + batch_size]
        which = np.array([i for i, _, _ in batch])
        for i in [i for i in prepared if i < which.min()]:
            del prepared[i]
        stack = []
        for job in batch:
            i = job[0]
            if job[1] != _MAP and i not in prepared:
                prepared[i] = (_baseline(images[i], baseline), _ranks(maps[i]))
            stack.append(_perturbed(job, images[i], maps[i], prepared.get(i), steps))
        result = explainer(np.stack(stack).astype(np.float32), classes[which] if class_input else None)
        p = _probabilities(result.probabilities, len(batch), explainer.metadata, explainer)
        out[start : start + len(batch)] = p[np.arange(len(batch)), classes[which]]
        bar.update(len(batch))
    return out


def _scores(chosen, jobs, probs, y, steps, n) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    found = {job: p for job, p in zip(jobs, probs, strict=True)}
    scores: dict[str, np.ndarray] = {}
    curves: dict[str, np.ndarray] = {}
    if "average_drop" in chosen or "increase_in_confidence" in chosen:
        o = np.array([found[(i, _MAP, 0)] for i in range(n)])
        with np.errstate(divide="ignore", invalid="ignore"):
            drop = np.where(y > 0, np.maximum(0.0, y - o) / y, np.nan)
        if "average_drop" in chosen:
            scores["average_drop"] = drop
        if "increase_in_confidence" in chosen:
            scores["increase_in_confidence"] = (o > y).astype(np.float64)
    for name, kind in (("deletion", _DELETE), ("insertion", _INSERT)):
        if name not in chosen:
            continue
        curve = np.empty((n, steps + 1))
        for i in range(n):
            inner = [found[(i, kind, s)] for s in range(1, steps)]
            base = found[(i, _DELETE, steps)]
            curve[i] = [y[i], *inner, base] if kind == _DELETE else [base, *inner, y[i]]
        curves[name] = curve
        scores[name] = (curve.sum(axis=1) - (curve[:, 0] + curve[:, -1]) / 2) / steps  # trapezoid, dx = 1/S
    return scores, curves


def _pointing(maps, constant, boxes: list[list[Box]], tolerance: float) -> np.ndarray:
    hits = np.full(len(maps), np.nan)
    for i, image_boxes in enumerate(boxes):
        if not image_boxes:
            continue
        if constant[i]:
            hits[i] = 0.0
            continue
        row, col = np.unravel_index(int(np.argmax(maps[i])), maps[i].shape)
        px, py = col + 0.5, row + 0.5
        near = [math.hypot(max(x0 - px, 0.0, px - x1), max(y0 - py, 0.0, py - y1)) <= tolerance
                for x0, y0, x1, y1 in image_boxes]  # fmt: skip
        hits[i] = float(any(near))
    return hits


class _progress:
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
