"""ROAD (Rong et al. 2022, arXiv:2202.00449): remove pixels by the map and impute them, numpy only.

Removing pixels by blurring or greying them leaves holes shaped like the map, and the
model reads the holes (the images are off its distribution): ROAD replaces the removed
pixels by a *noisy linear imputation* from their neighbours instead. This module is the
imputation of the paper's code as pytorch-grad-cam 1.5.7 ships it
(``pytorch_grad_cam.metrics.road``), which the tests use as the oracle:

- The mask: for percentile ``p``, ``t = numpy.percentile(m, p)`` of the map ``m`` (float32;
  linear interpolation) and the pixels with ``m >= t`` are removed (``m < t`` kept): most
  relevant first (MoRF) removes about the top ``100 - p`` %; least relevant first (LeRF)
  does the same with ``m = 1 - map``, removing about the bottom ``100 - p`` %.
- The imputation: each removed pixel's value ``x_i`` is the weighted mean of its valid
  8 neighbours (weights 1/6 for the 4 edge neighbours, 1/12 for the 4 corners, the
  weights of neighbours outside the picture dropped), removed neighbours being unknowns
  too, each channel on its own: ``s_i x_i - sum_j w_ij x_j = sum_k w_ik v_k`` (``j``
  removed, ``k`` kept with value ``v_k``), then ``noise * N(0, 1)`` is added to each
  imputed value (default 0.01, as upstream, in the normalized input space; seeded here).

pytorch-grad-cam solves that system with ``scipy.sparse.linalg.spsolve``. The serve side
imports numpy, ONNX Runtime and OpenCV only, so we solve it exactly by block elimination
instead: the unknowns of one picture row form one block, neighbours reach only the rows
above and below, so the matrix is block tridiagonal and a block Thomas algorithm (dense
``numpy.linalg.solve`` per row, float64) solves it directly. The matrix is a diagonally
dominant M-matrix, irreducibly so when some pixel is kept, which makes elimination without
pivoting stable. A map with one value everywhere keeps no pixel (``m < t`` nowhere): no
system to solve, and :func:`road_mask` returns None (the caller scores NaN).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InputError

__all__ = ["DEFAULT_PERCENTILES", "ROAD_NOISE", "check_percentiles", "impute", "road_mask"]

DEFAULT_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)  # pytorch-grad-cam's and the paper's
ROAD_NOISE = 0.01
_EDGE, _CORNER = 1.0 / 6.0, 1.0 / 12.0


def check_percentiles(percentiles: Sequence[float]) -> tuple[float, ...]:
    """Percentiles in the open interval (0, 100), at least one, sorted, no repeats."""
    try:
        values = tuple(float(p) for p in percentiles)
    except (TypeError, ValueError):
        raise InputError(f"ROAD percentiles must be numbers in (0, 100), got {percentiles!r}") from None
    bad = [p for p in values if not 0.0 < p < 100.0]
    if bad or not values:
        raise InputError(f"ROAD percentiles must lie in (0, 100), got {f'{bad[0]:g}' if bad else 'none'}")
    return tuple(sorted(set(values)))


def road_mask(cam: np.ndarray, percentile: float, most_relevant_first: bool) -> np.ndarray | None:
    """``[H, W]`` bool, True where a pixel is removed; None when nothing would be kept (a flat map).

    Upstream compares a float32 torch tensor with the float64 percentile, which torch
    rounds to float32 first (a Python scalar does not promote a tensor): done here too.
    """
    m = np.asarray(cam, dtype=np.float32)
    if not most_relevant_first:
        m = np.float32(1.0) - m
    threshold = np.float32(np.percentile(m, percentile))
    kept = m < threshold
    return None if not kept.any() else ~kept


def _row_coupling(cols_a: np.ndarray, cols_b: np.ndarray) -> np.ndarray:
    """``-w`` between the unknowns of two adjacent rows (columns ``cols_a`` and ``cols_b``)."""
    d = cols_a[:, None] - cols_b[None, :]
    return np.where(d == 0, -_EDGE, np.where(np.abs(d) == 1, -_CORNER, 0.0))


def impute(image: np.ndarray, removed: np.ndarray, *, noise: float = ROAD_NOISE, seed: int = 0) -> np.ndarray:
    """The image with its ``removed`` pixels replaced by the noisy linear imputation (module docstring).

    Args:
        image: ``[C, H, W]`` float (normalized input space).
        removed: ``[H, W]`` bool, True where the pixel is imputed; some pixel must be kept.
        noise: standard deviation of the Gaussian noise added to each imputed value.
        seed: seeds the noise.

    Returns:
        float32 ``[C, H, W]``.
    """
    image = np.asarray(image, dtype=np.float64)
    c, h, w = image.shape
    removed = np.asarray(removed, dtype=bool)
    inside = np.pad(np.ones((h, w), bool), 1)
    values = np.pad(np.where(removed[None], 0.0, image), ((0, 0), (1, 1), (1, 1)))
    offsets = [(dy, dx, _CORNER if dy and dx else _EDGE) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
    # s_i (sum of the weights of neighbours inside the picture) and the known neighbours' sum, per pixel
    weight_sum = np.zeros((h, w))
    rhs = np.zeros((c, h, w))
    for dy, dx, wt in offsets:
        window = (slice(1 + dy, 1 + dy + h), slice(1 + dx, 1 + dx + w))
        weight_sum += wt * inside[window]
        rhs += wt * values[(slice(None), *window)]
    rows = [np.flatnonzero(removed[r]) for r in range(h)]
    solution = _block_thomas(rows, weight_sum, rhs)
    out = image.copy()
    rng = np.random.default_rng(seed)
    ys, xs = np.nonzero(removed)
    out[:, ys, xs] = solution + noise * rng.standard_normal(solution.shape)
    return out.astype(np.float32)


def _block_thomas(rows: list[np.ndarray], weight_sum: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve the unknowns row block by row block: ``[C, U]`` in raster order of the unknowns."""
    h = len(rows)
    gains: list[np.ndarray | None] = [None] * h  # S_r^-1 K_{r,r+1}
    partial: list[np.ndarray] = [np.zeros((0, rhs.shape[0]))] * h  # S_r^-1 y_r
    for r in range(h):
        cols = rows[r]
        k = np.diag(weight_sum[r, cols])
        d = cols[:, None] - cols[None, :]
        k[np.abs(d) == 1] = -_EDGE
        b = rhs[:, r, cols].T  # [u, C]
        if r > 0 and len(rows[r - 1]):
            lower = _row_coupling(cols, rows[r - 1])  # K_{r,r-1}
            k = k - lower @ gains[r - 1]
            b = b - lower @ partial[r - 1]
        upper = _row_coupling(cols, rows[r + 1]) if r + 1 < h else np.zeros((len(cols), 0))
        if len(cols):
            solved = np.linalg.solve(k, np.concatenate([upper, b], axis=1))  # k: the Schur complement S_r
            gains[r], partial[r] = solved[:, : upper.shape[1]], solved[:, upper.shape[1] :]
        else:
            gains[r], partial[r] = upper, b
    x: list[np.ndarray] = [np.zeros((0, rhs.shape[0]))] * h
    for r in range(h - 1, -1, -1):
        x[r] = partial[r] if r + 1 == h or not len(rows[r]) else partial[r] - gains[r] @ x[r + 1]
    return np.concatenate(x, axis=0).T
