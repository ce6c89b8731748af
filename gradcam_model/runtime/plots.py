"""Line plots drawn with OpenCV (the serve side has no matplotlib): the deletion and insertion curves."""

from __future__ import annotations

import numpy as np

from ..errors import InputError

__all__ = ["curve_plot"]

_FONT_SCALE = 0.45
_TICKS = (0.0, 0.25, 0.5, 0.75, 1.0)
_WHITE = (255, 255, 255)
_AXIS = (40, 40, 40)
_GRID = (225, 225, 225)
_FAINT = (170, 190, 230)  # one line per image
_MEAN = (20, 60, 190)  # the mean over images
_MARGINS = (40, 20, 50, 62)  # top, right, bottom, left: room for the title, tick labels and axis labels
_MAX_FAINT_LINES = 500  # more only slows the drawing; the mean covers every image


def _text(canvas: np.ndarray, text: str, center_x: int, baseline_y: int, scale: float = _FONT_SCALE) -> None:
    import cv2

    text = text.encode("ascii", "replace").decode("ascii")  # Hershey fonts draw ASCII only
    (width, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    origin = (int(center_x - width // 2), int(baseline_y))
    cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, _AXIS, 1, cv2.LINE_AA)


def _vertical_text(canvas: np.ndarray, text: str, center_y: int, left: int) -> None:
    """Text rotated a quarter turn (reads bottom to top), drawn flat on a strip and rotated."""
    import cv2

    (width, height), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, _FONT_SCALE, 1)
    strip = np.full((height + base + 4, width + 4, 3), _WHITE, dtype=np.uint8)
    _text(strip, text, strip.shape[1] // 2, height + 2)
    strip = np.ascontiguousarray(np.rot90(strip))
    top = max(0, center_y - strip.shape[0] // 2)
    h = min(strip.shape[0], canvas.shape[0] - top)
    w = min(strip.shape[1], canvas.shape[1] - left)
    canvas[top : top + h, left : left + w] = strip[:h, :w]


def curve_plot(
    curves: np.ndarray,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    size: tuple[int, int] = (360, 480),
) -> np.ndarray:
    """Curves over ``x`` in ``[0, 1]`` with values in ``[0, 1]``: one faint line per row, the mean in bold.

    Args:
        curves: ``[N, M]`` values at ``M >= 2`` evenly spaced points of ``[0, 1]``; NaN rows are skipped.
        title: drawn above the plot.
        xlabel, ylabel: axis labels.
        size: ``(H, W)`` of the picture in pixels.

    Returns:
        RGB ``uint8 [H, W, 3]`` on a white background, with axes, ticks at 0, 0.25, ..., 1 and labels.
    """
    import cv2

    curves = np.asarray(curves, dtype=np.float64)
    if curves.ndim != 2 or curves.shape[1] < 2:
        raise InputError(f"curves must be [N, M] with M >= 2 points, got shape {curves.shape}")
    h, w = int(size[0]), int(size[1])
    top, right, bottom, left = _MARGINS
    if h < top + bottom + 20 or w < left + right + 20:
        raise InputError(
            f"a plot of {h}x{w} pixels is too small; give at least {top + bottom + 20}x{left + right + 20}"
        )
    canvas = np.full((h, w, 3), _WHITE, dtype=np.uint8)
    x0, x1, y0, y1 = left, w - right, h - bottom, top  # pixel box of the unit square (y grows downwards)

    def points(row: np.ndarray) -> np.ndarray:
        xs = x0 + np.linspace(0.0, 1.0, row.size) * (x1 - x0)
        ys = y0 - np.clip(row, 0.0, 1.0) * (y0 - y1)
        return np.round(np.stack([xs, ys], axis=1)).astype(np.int32)

    for t in _TICKS:
        gx, gy = round(x0 + t * (x1 - x0)), round(y0 - t * (y0 - y1))
        cv2.line(canvas, (gx, y0), (gx, y1), _GRID, 1)
        cv2.line(canvas, (x0, gy), (x1, gy), _GRID, 1)
        cv2.line(canvas, (gx, y0), (gx, y0 + 4), _AXIS, 1)
        cv2.line(canvas, (x0 - 4, gy), (x0, gy), _AXIS, 1)
        _text(canvas, f"{t:g}", gx, y0 + 18)
        _text(canvas, f"{t:g}", x0 - 22, gy + 5)
    finite = curves[np.isfinite(curves).all(axis=1)]
    for row in finite[:_MAX_FAINT_LINES]:
        cv2.polylines(canvas, [points(row)], False, _FAINT, 1, cv2.LINE_AA)
    if len(finite):
        cv2.polylines(canvas, [points(finite.mean(axis=0))], False, _MEAN, 2, cv2.LINE_AA)
    cv2.line(canvas, (x0, y0), (x1, y0), _AXIS, 1)
    cv2.line(canvas, (x0, y0), (x0, y1), _AXIS, 1)
    _text(canvas, title, (x0 + x1) // 2, top - 14, scale=0.5)
    _text(canvas, xlabel, (x0 + x1) // 2, h - 10)
    _vertical_text(canvas, ylabel, (y0 + y1) // 2, 4)
    return canvas
