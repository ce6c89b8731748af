"""Baseline maps for ``gradcam evaluate``, and each method's margin over the best of them.

A metric's value means little alone: a deletion AUC of 0.24 is good only if maps that
know nothing score worse. Three baselines are scored with the same metrics, on the same
images and classes, through the same artifact:

- ``random``: smooth random maps, uniform noise in ``[0, 1)`` on the grid the method's
  maps were upsampled from (found from the maps themselves, see :func:`feature_grid`),
  upsampled the same way (bilinear, half-pixel centres: OpenCV's ``INTER_LINEAR``, which
  is torch's ``align_corners=False``) and min-max normalized; ``RANDOM_DRAWS`` seeded
  draws per image, whose scores are averaged per image. Pixel-level noise would be no
  fair baseline: it scatters small holes everywhere, which perturbation metrics punish
  or reward for reasons unrelated to the map (the ROAD paper's point).
- ``centre``: a centred Gaussian, standard deviation a quarter of each side (the photo
  bias: objects tend to sit in the middle).
- ``inverted``: ``1 - M``, the method's own map upside down: a method should beat it by
  far; if it does not, the metric does not see the map.

:func:`margins` compares a method with the baselines per metric: the margin is the
method's mean minus the best baseline's mean, signed so that positive means better, with
a percentile bootstrap 95% interval over the images (resampled jointly: the images
are paired, and the best baseline is picked again in each resample). The verdict is
``better than every baseline`` when the interval lies above 0, ``worse`` (than the best
baseline) when below, else ``not distinguishable``; with fewer than ``MIN_IMAGES``
images, no verdict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InputError

__all__ = ["BASELINE_MAPS", "RANDOM_DRAWS", "Margin", "baseline_maps", "check_baselines", "feature_grid", "margins"]

BASELINE_MAPS = ("random", "centre", "inverted")
RANDOM_DRAWS = 3
BOOTSTRAP_RESAMPLES = 2000
MIN_IMAGES = 5  # a bootstrap over fewer images says little: no verdict
_FIT_TOLERANCE = 1e-4  # a map lies on a grid's upsampling when its projection misses by less (float32 maps)


def check_baselines(names: Sequence[str] | str | None) -> tuple[str, ...]:
    """Baseline names, canonical order; ``None``: all of them; ``()``: none."""
    if names is None:
        return BASELINE_MAPS
    chosen = (names,) if isinstance(names, str) else tuple(names)
    unknown = [b for b in chosen if b not in BASELINE_MAPS]
    if unknown:
        raise InputError(f"unknown baseline {unknown[0]!r}; expected some of: {', '.join(BASELINE_MAPS)}")
    return tuple(b for b in BASELINE_MAPS if b in chosen)


def _upsampling(size: int, grid: int) -> np.ndarray:
    """``[size, grid]``: bilinear upsampling with half-pixel centres as a matrix (OpenCV's own resize)."""
    import cv2

    return cv2.resize(np.eye(grid, dtype=np.float64), (grid, size), interpolation=cv2.INTER_LINEAR)


def _axis_grid(maps: np.ndarray, axis: int) -> int:
    """The coarsest grid along ``axis`` whose bilinear upsampling reproduces every map."""
    size = maps.shape[axis + 1]
    columns = np.moveaxis(maps, axis + 1, 1).reshape(len(maps), size, -1).transpose(1, 0, 2).reshape(size, -1)
    scale = max(float(np.abs(columns).max()), 1e-12)
    for grid in range(1, size // 2 + 1):
        u = _upsampling(size, grid)
        fit, *_ = np.linalg.lstsq(u, columns, rcond=None)
        if np.abs(u @ fit - columns).max() <= _FIT_TOLERANCE * scale:
            return grid
    return size  # not an upsampled map: noise at full resolution


def feature_grid(maps: np.ndarray) -> tuple[int, int]:
    """``(h, w)`` of the grid the maps ``[N, H, W]`` were bilinearly upsampled from.

    The artifact's maps are ReLU'd at the target layer's resolution, upsampled, then
    min-max normalized (an affine change), so every column of a map lies in the span of
    the upsampling matrix of the true grid: the coarsest grid that fits is it.
    """
    sample = np.asarray(maps[:4], dtype=np.float64)
    return _axis_grid(sample, 0), _axis_grid(sample, 1)


def _normalized(maps: np.ndarray) -> np.ndarray:
    low = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - low
    return np.where(span > 0, (maps - low) / np.where(span > 0, span, 1.0), 0.0).astype(np.float32)


def baseline_maps(name: str, maps: np.ndarray, *, draw: int = 0, grid: tuple[int, int] | None = None, seed: int = 0):
    """The ``[N, H, W]`` maps of baseline ``name`` for the method's ``maps`` (see the module docstring)."""
    n, h, w = maps.shape
    if name == "inverted":
        return (1.0 - maps).astype(np.float32)
    if name == "centre":
        ys, xs = (np.arange(h) + 0.5 - h / 2) / (h / 4), (np.arange(w) + 0.5 - w / 2) / (w / 4)
        prior = np.exp(-0.5 * (ys[:, None] ** 2 + xs[None, :] ** 2))
        return np.broadcast_to(_normalized(prior[None]), (n, h, w)).copy()
    if name == "random":
        gh, gw = grid or feature_grid(maps)
        rng = np.random.default_rng([seed, draw])
        noise = rng.random((n, gh, gw))
        return _normalized(np.einsum("hi,nij,wj->nhw", _upsampling(h, gh), noise, _upsampling(w, gw)))
    raise InputError(f"unknown baseline {name!r}; expected one of: {', '.join(BASELINE_MAPS)}")


@dataclass(frozen=True)
class Margin:
    """A method against the baselines on one metric (positive: the method is better)."""

    metric: str
    best_baseline: str
    margin: float
    low: float
    high: float
    images: int
    verdict: str


def margins(
    method: Mapping[str, np.ndarray],
    baselines: Mapping[str, Mapping[str, np.ndarray]],
    better: Mapping[str, str],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> list[Margin]:
    """One :class:`Margin` per metric of ``method`` (per-image scores) that every baseline has too.

    Images where any of the maps has no score (NaN) are left out of that metric.
    """
    out = []
    rng = np.random.default_rng(seed)
    for metric, scores in method.items():
        if not baselines or not all(metric in b for b in baselines.values()):
            continue
        sign = 1.0 if better[metric] == "higher" else -1.0
        table = np.stack([scores, *(b[metric] for b in baselines.values())])  # [1 + B, N]
        table = sign * table[:, np.isfinite(table).all(axis=0)]
        n = table.shape[1]
        if n == 0:
            continue
        means = table.mean(axis=1)
        best = int(np.argmax(means[1:]))
        margin = float(means[0] - means[1 + best])
        picks = rng.integers(0, n, size=(resamples, n))
        resampled = table[:, picks].mean(axis=2)  # [1 + B, resamples]
        boot = resampled[0] - resampled[1:].max(axis=0)
        low, high = (float(v) for v in np.percentile(boot, [2.5, 97.5]))
        verdict = "better than every baseline" if low > 0 else "worse" if high < 0 else "not distinguishable"
        if n < MIN_IMAGES:
            verdict = f"too few images to tell ({n} < {MIN_IMAGES})"
        out.append(Margin(metric, list(baselines)[best], margin, low, high, n, verdict))
    return out
