"""The perturbation metrics of ``gradcam evaluate`` for one set of maps: jobs, perturbed images, scores.

Every perturbed image of every image goes through the artifact in batches of
``batch_size`` (perturbed images of several images mixed); an image's jobs are
contiguous, so its substrate, pixel ranking and ROAD masks live only while its jobs
run. The definitions are in :mod:`gradcam_model.runtime.evaluate`'s docstring.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .road import impute, road_mask

__all__ = ["PerturbationOptions", "pointing", "score_maps"]

BLUR_KERNEL, BLUR_SIGMA = 11, 5.0  # RISE's blurred substrate
_MAP, _DELETE, _INSERT, _MORF, _LERF = range(5)  # kinds of perturbed images
_ROAD = ("road_morf", "road_lerf", "road_combined")


@dataclass(frozen=True)
class PerturbationOptions:
    """What :func:`score_maps` computes: the metrics and their parameters (checked by the caller)."""

    metrics: tuple[str, ...]
    steps: int
    substrate: str  # "blur" or "mean": what deletion/insertion put in place of pixels
    batch_size: int
    percentiles: tuple[float, ...]  # ROAD's
    road_noise: float

    def wants(self, *names: str) -> bool:
        return any(n in self.metrics for n in names)


def substrate(image: np.ndarray, kind: str) -> np.ndarray:
    """What deleted pixels become: the dataset mean colour (0 after normalization) or RISE's blur."""
    if kind == "mean":
        return np.zeros_like(image)
    import cv2

    return np.stack([cv2.GaussianBlur(ch, (BLUR_KERNEL, BLUR_KERNEL), BLUR_SIGMA) for ch in image])


def ranks(cam: np.ndarray) -> np.ndarray:
    """Rank of each pixel by map value, descending, ties in raster order: ``[H, W]`` int."""
    order = np.argsort(-cam.ravel(), kind="stable")
    out = np.empty(order.size, dtype=np.int64)
    out[order] = np.arange(order.size)
    return out.reshape(cam.shape)


def jobs_for(image: int, options: PerturbationOptions) -> list[tuple[int, int, int]]:
    """``(image, kind, step)`` of each perturbed image; the unperturbed image is never rerun.

    Deletion's last step and insertion's first are both the substrate: run once, as a deletion.
    """
    jobs = []
    steps = options.steps
    if options.wants("average_drop", "increase_in_confidence"):
        jobs.append((image, _MAP, 0))
    if options.wants("deletion", "insertion"):
        jobs.append((image, _DELETE, steps))
    if options.wants("deletion"):
        jobs.extend((image, _DELETE, s) for s in range(1, steps))
    if options.wants("insertion"):
        jobs.extend((image, _INSERT, s) for s in range(1, steps))
    for kind, names in ((_MORF, ("road_morf", "road_combined")), (_LERF, ("road_lerf", "road_combined"))):
        if options.wants(*names):
            jobs.extend((image, kind, k) for k in range(len(options.percentiles)))
    return jobs


def _perturbed(job, image: np.ndarray, cam: np.ndarray, prepared: dict, options: PerturbationOptions):
    """The perturbed image of ``job``, or None when it is not defined (ROAD on a flat map)."""
    i, kind, step = job
    if kind == _MAP:
        return image * cam[None]
    if kind in (_MORF, _LERF):
        removed = road_mask(cam, options.percentiles[step], kind == _MORF)
        seed = (i * 2 + (kind == _LERF)) * 1009 + step
        return None if removed is None else impute(image, removed, noise=options.road_noise, seed=seed)
    if "ranks" not in prepared:
        prepared["base"], prepared["ranks"] = substrate(image, options.substrate), ranks(cam)
    base, order = prepared["base"], prepared["ranks"]
    revealed = order < (step * order.size) // options.steps  # the first n_s pixels of the ranking
    if kind == _DELETE:
        return np.where(revealed[None], base, image)
    return np.where(revealed[None], image, base)


def run_jobs(explainer, jobs, images, maps, classes, options: PerturbationOptions, bar, probabilities) -> np.ndarray:
    """``p_c`` of every perturbed image (NaN where undefined), ``batch_size`` at a time.

    ``probabilities(result, n)`` checks and returns the artifact's ``[n, C]`` probabilities.
    """
    class_input = explainer.metadata.class_input
    out = np.full(len(jobs), np.nan)
    prepared: dict = {}
    current = -1
    pending: list[tuple[int, np.ndarray]] = []

    def flush():
        where = np.array([k for k, _ in pending])
        which = np.array([jobs[k][0] for k in where])
        result = explainer(
            np.stack([x for _, x in pending]).astype(np.float32), classes[which] if class_input else None
        )
        p = probabilities(result, len(pending))
        out[where] = p[np.arange(len(pending)), classes[which]]
        bar.update(len(pending))
        pending.clear()

    for k, job in enumerate(jobs):
        if job[0] != current:
            current, prepared = job[0], {}
        x = _perturbed(job, images[job[0]], maps[job[0]], prepared, options)
        if x is None:
            bar.update(1)
            continue
        pending.append((k, x))
        if len(pending) == options.batch_size:
            flush()
    if pending:
        flush()
    return out


def scores_from(jobs, probs, y, options: PerturbationOptions, n: int):
    """Per-image scores and curves from the probabilities of the jobs (see the module docstring)."""
    found = {job: p for job, p in zip(jobs, probs, strict=True)}
    scores: dict[str, np.ndarray] = {}
    curves: dict[str, np.ndarray] = {}
    steps = options.steps
    if options.wants("average_drop", "increase_in_confidence"):
        o = np.array([found[(i, _MAP, 0)] for i in range(n)])
        with np.errstate(divide="ignore", invalid="ignore"):
            drop = np.where(y > 0, np.maximum(0.0, y - o) / y, np.nan)
        if options.wants("average_drop"):
            scores["average_drop"] = drop
        if options.wants("increase_in_confidence"):
            scores["increase_in_confidence"] = (o > y).astype(np.float64)
    for name, kind in (("deletion", _DELETE), ("insertion", _INSERT)):
        if not options.wants(name):
            continue
        curve = np.empty((n, steps + 1))
        for i in range(n):
            inner = [found[(i, kind, s)] for s in range(1, steps)]
            base = found[(i, _DELETE, steps)]
            curve[i] = [y[i], *inner, base] if kind == _DELETE else [base, *inner, y[i]]
        curves[name] = curve
        scores[name] = (curve.sum(axis=1) - (curve[:, 0] + curve[:, -1]) / 2) / steps  # trapezoid, dx = 1/S
    road: dict[str, np.ndarray] = {}
    for name, kind in (("road_morf", _MORF), ("road_lerf", _LERF)):
        if options.wants(name, "road_combined"):
            after = np.array([[found[(i, kind, k)] for k in range(len(options.percentiles))] for i in range(n)])
            road[name] = after
            curves[name] = after  # p_c after removing (100 - percentile) % of the pixels
    # as pytorch-grad-cam's ROAD classes: differences p_after - p_before averaged over the percentiles
    diffs = {name: (after - y[:, None]).mean(axis=1) for name, after in road.items()}
    if options.wants("road_morf"):
        scores["road_morf"] = diffs["road_morf"]
    if options.wants("road_lerf"):
        scores["road_lerf"] = diffs["road_lerf"]
    if options.wants("road_combined"):
        scores["road_combined"] = (diffs["road_lerf"] - diffs["road_morf"]) / 2
    return scores, curves


def pointing(maps, constant, boxes, tolerance: float) -> np.ndarray:
    """Pointing-game hits (1/0), NaN for images without boxes; a flat map points nowhere (a miss)."""
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


def score_maps(explainer, images, maps, classes, y, options: PerturbationOptions, bar, probabilities):
    """Every perturbation metric of ``options`` for ``maps`` (``[N, H, W]``): (scores, curves)."""
    jobs = [job for i in range(len(images)) for job in jobs_for(i, options)]
    probs = run_jobs(explainer, jobs, images, maps, classes, options, bar, probabilities)
    return scores_from(jobs, probs, y, options, len(images))


def jobs_per_image(options: PerturbationOptions) -> int:
    """How many perturbed images one image's maps cost (for the progress bar)."""
    return len(jobs_for(0, options))
