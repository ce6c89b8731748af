"""Line plots drawn with OpenCV (the serve side has no matplotlib): the deletion, insertion and ROAD curves."""

from __future__ import annotations

import numpy as np

from ..errors import InputError

__all__ = ["SERIES_COLOURS", "curve_plot", "mean_curve_plot"]

_FONT_SCALE = 0.45
_TICKS = (0.0, 0.25, 0.5, 0.75, 1.0)
_WHITE = (255, 255, 255)
_AXIS = (40, 40, 40)
_GRID = (225, 225, 225)
_FAINT = (170, 190, 230)  # one line per image
_MEAN = (20, 60, 190)  # the mean over images
_MARGINS = (40, 20, 50, 62)  # top, right, bottom, left: room for the title, tick labels and axis labels
SERIES_COLOURS = ((20, 60, 190), (200, 90, 20), (40, 150, 60), (150, 40, 150), (120, 120, 120), (190, 30, 60))
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


def _frame(h: int, w: int, title: str, xlabel: str, ylabel: str):
    """A white canvas with the unit square's grid, ticks and labels; returns it and ``points(xs, ys)``."""
    import cv2

    top, right, bottom, left = _MARGINS
    if h < top + bottom + 20 or w < left + right + 20:
        raise InputError(
            f"a plot of {h}x{w} pixels is too small; give at least {top + bottom + 20}x{left + right + 20}"
        )
    canvas = np.full((h, w, 3), _WHITE, dtype=np.uint8)
    x0, x1, y0, y1 = left, w - right, h - bottom, top  # pixel box of the unit square (y grows downwards)

    def points(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        px = x0 + np.clip(xs, 0.0, 1.0) * (x1 - x0)
        py = y0 - np.clip(ys, 0.0, 1.0) * (y0 - y1)
        return np.round(np.stack([px, py], axis=1)).astype(np.int32)

    for t in _TICKS:
        gx, gy = round(x0 + t * (x1 - x0)), round(y0 - t * (y0 - y1))
        cv2.line(canvas, (gx, y0), (gx, y1), _GRID, 1)
        cv2.line(canvas, (x0, gy), (x1, gy), _GRID, 1)
        cv2.line(canvas, (gx, y0), (gx, y0 + 4), _AXIS, 1)
        cv2.line(canvas, (x0 - 4, gy), (x0, gy), _AXIS, 1)
        _text(canvas, f"{t:g}", gx, y0 + 18)
        _text(canvas, f"{t:g}", x0 - 22, gy + 5)
    cv2.line(canvas, (x0, y0), (x1, y0), _AXIS, 1)
    cv2.line(canvas, (x0, y0), (x0, y1), _AXIS, 1)
    _text(canvas, title, (x0 + x1) // 2, top - 14, scale=0.5)
    _text(canvas, xlabel, (x0 + x1) // 2, h - 10)
    _vertical_text(canvas, ylabel, (y0 + y1) // 2, 4)
    return canvas, points


def _check_curves(curves, xs) -> tuple[np.ndarray, np.ndarray]:
    curves = np.asarray(curves, dtype=np.float64)
    if curves.ndim != 2 or curves.shape[1] < 2:
        raise InputError(f"curves must be [N, M] with M >= 2 points, got shape {curves.shape}")
    xs = np.linspace(0.0, 1.0, curves.shape[1]) if xs is None else np.asarray(xs, dtype=np.float64)
    if xs.shape != (curves.shape[1],):
        raise InputError(f"got {xs.size} x values for curves of {curves.shape[1]} points")
    return curves, xs


def curve_plot(
    curves: np.ndarray,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    size: tuple[int, int] = (360, 480),
    xs: np.ndarray | None = None,
) -> np.ndarray:
    """Curves with values in ``[0, 1]``: one faint line per row (one image), the mean in bold.

    Args:
        curves: ``[N, M]`` values at ``M >= 2`` points; NaN rows are skipped.
        title: drawn above the plot.
        xlabel, ylabel: axis labels.
        size: ``(H, W)`` of the picture in pixels.
        xs: the ``M`` x positions in ``[0, 1]`` (default: evenly spaced from 0 to 1).

    Returns:
        RGB ``uint8 [H, W, 3]`` on a white background, with axes, ticks at 0, 0.25, ..., 1 and labels.
    """
    import cv2

    curves, xs = _check_curves(curves, xs)
    canvas, points = _frame(int(size[0]), int(size[1]), title, xlabel, ylabel)
    finite = curves[np.isfinite(curves).all(axis=1)]
    for row in finite[:_MAX_FAINT_LINES]:
        cv2.polylines(canvas, [points(xs, row)], False, _FAINT, 1, cv2.LINE_AA)
    if len(finite):
        cv2.polylines(canvas, [points(xs, finite.mean(axis=0))], False, _MEAN, 2, cv2.LINE_AA)
    return canvas


def mean_curve_plot(
    series: dict[str, np.ndarray],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    size: tuple[int, int] = (400, 560),
    xs: np.ndarray | None = None,
) -> np.ndarray:
    """One mean curve per series with a shaded 95% interval of the mean, and a legend.

    The band is ``mean +- 1.96 * sd / sqrt(n)`` at each point, over the series' finite rows
    (images); the first series (the method) is drawn last, on top, and thicker.

    Args:
        series: label -> ``[N, M]`` curves (same ``M`` for all), in legend order.
        title, xlabel, ylabel, size, xs: as :func:`curve_plot`.
    """
    import cv2

    if not series or len(series) > len(SERIES_COLOURS):
        raise InputError(f"give 1 to {len(SERIES_COLOURS)} series to plot, got {len(series)}")
    checked = [(label, *_check_curves(c, xs)) for label, c in series.items()]
    canvas, points = _frame(int(size[0]), int(size[1]), title, xlabel, ylabel)
    for k in range(len(checked) - 1, -1, -1):
        label, curves, x = checked[k]
        finite = curves[np.isfinite(curves).all(axis=1)]
        if not len(finite):
            continue
        mean = finite.mean(axis=0)
        half = 1.96 * finite.std(axis=0, ddof=1) / np.sqrt(len(finite)) if len(finite) > 1 else np.zeros_like(mean)
        band = np.concatenate([points(x, mean + half), points(x, mean - half)[::-1]])
        shade = canvas.copy()
        cv2.fillPoly(shade, [band], SERIES_COLOURS[k])
        cv2.addWeighted(shade, 0.15, canvas, 0.85, 0, dst=canvas)
        cv2.polylines(canvas, [points(x, mean)], False, SERIES_COLOURS[k], 3 if k == 0 else 2, cv2.LINE_AA)
    _legend(canvas, [label for label, _, _ in checked])
    return canvas


def _legend(canvas: np.ndarray, labels: list[str]) -> None:
    """A boxed legend in the top right corner of the plotting area."""
    import cv2

    widths = [cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, _FONT_SCALE, 1)[0][0] for t in labels]
    top, right = _MARGINS[0], _MARGINS[1]
    box_w, line_h = max(widths) + 40, 18
    x_right = canvas.shape[1] - right - 6
    x_left, y_top = x_right - box_w, top + 6
    cv2.rectangle(canvas, (x_left, y_top), (x_right, y_top + line_h * len(labels) + 6), _WHITE, -1)
    cv2.rectangle(canvas, (x_left, y_top), (x_right, y_top + line_h * len(labels) + 6), _AXIS, 1)
    for k, label in enumerate(labels):
        y = y_top + 6 + line_h * k + line_h // 2
        cv2.line(canvas, (x_left + 6, y), (x_left + 28, y), SERIES_COLOURS[k], 3 if k == 0 else 2, cv2.LINE_AA)
        _text(canvas, label, x_left + 34 + widths[k] // 2, y + 5)
