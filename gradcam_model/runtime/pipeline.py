"""Explain image files end to end: decode, batch, run, overlays, grid and CSV, streaming.

:func:`explain_files` is what ``gradcam explain`` runs, and what a server or a batch
engine can call. While ONNX Runtime runs batch *i* on the calling thread, worker
threads decode and preprocess batch *i + 1* and compose and encode the overlays of
batch *i - 1*; at most two batches wait on each side, so memory does not grow with
the number of images. Every file is written atomically.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._atomic import write_bytes_atomic
from ..contract import ArtifactMetadata
from ..errors import InputError
from .explainer import Explainer, load_explainer
from .images import DEFAULT_MAX_SIDE, explained_region, load_image, preprocess, target_size
from .inputs import ImageInput, collect_images, resolve_class
from .outputs import (
    CSV_FIELDS,
    GRID_LIMIT,
    ExplainSummary,
    Prediction,
    overlay_name,
    prediction_of,
    tile_caption,
    tile_color,
    write_csv,
    write_grid,
)
from .visualize import OVERLAY_FORMATS, check_alpha, encode_image, overlay, thumbnail

__all__ = ["CSV_FIELDS", "ExplainSummary", "Prediction", "explain_files"]

log = logging.getLogger(__name__)

DEFAULT_TILE_SIZE = 256
_SMALL = 0.5  # pictures under half the model's input size on a side get a warning (once)


@dataclass(frozen=True)
class _Options:
    out: Path
    colormap: str
    alpha: float
    ext: str
    tile: int
    keep_tile: bool
    meta: ArtifactMetadata | None = None  # where the maps lie in each picture (explained_region)


def _decode(item: ImageInput, meta, max_side: int | None):
    """Worker: the picture and the model input, or the error."""
    try:
        rgb = load_image(item.path, max_side=max_side)
        return rgb, preprocess(rgb, meta)
    except InputError as exc:
        return exc


def _encode(item: ImageInput, rgb: np.ndarray, cams: np.ndarray, opts: _Options):
    """Worker: compose, encode and write the overlays of one image; a grid thumbnail of the first."""
    paths, thumb = [], None
    for k in range(cams.shape[0]):
        region = explained_region(rgb.shape, opts.meta) if opts.meta is not None else None
        picture = overlay(rgb, cams[k], colormap=opts.colormap, alpha=opts.alpha, region=region)
        path = opts.out / "overlays" / overlay_name(item.key, k, opts.ext)
        write_bytes_atomic(path, encode_image(picture, opts.ext), overwrite=True)
        paths.append(path)
        if k == 0 and opts.keep_tile:
            thumb = thumbnail(picture, opts.tile)
    return tuple(paths), thumb


def _check_options(alpha, overlay_format, batch_size, workers, tile_size, max_side) -> None:
    check_alpha(alpha)
    if overlay_format not in OVERLAY_FORMATS:
        raise InputError(f"overlay_format must be one of {', '.join(OVERLAY_FORMATS)}, got {overlay_format!r}")
    for name, value in (("batch_size", batch_size), ("workers", workers), ("tile_size", tile_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 16):
        raise InputError(f"max_side must be an integer >= 16 or None, got {max_side!r}")


def explain_files(
    artifact: str | os.PathLike | Explainer,
    inputs: Sequence[str | os.PathLike] | Sequence[ImageInput],
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 8,
    class_: int | str | None = None,
    colormap: str = "jet",
    alpha: float = 0.4,
    overlay_format: str = "jpg",
    workers: int = 2,
    max_side: int | None = DEFAULT_MAX_SIDE,
    tile_size: int = DEFAULT_TILE_SIZE,
    progress: bool | None = None,
    on_skip: Callable[[ImageInput, str], None] | None = None,
) -> ExplainSummary:
    """Explain image files with an artifact; write overlays, ``grid.png`` and ``predictions.csv``.

    Args:
        artifact: an ``.onnx``/``.pt`` path or a loaded :class:`Explainer`.
        inputs: image files and folders (see :func:`collect_images`), or :class:`ImageInput` items.
        out_dir: output folder (created when there is something to write).
        batch_size: images per run.
        class_: class index or name to explain (artifacts exported with a class input);
            None explains the top prediction.
        colormap, alpha: the overlay's OpenCV colormap and heat-map weight.
        overlay_format: ``"jpg"`` (default, ~1 ms per picture) or ``"png"`` (lossless, ~10x slower).
        workers: decode and encode threads.
        max_side: pictures are decoded reduced to at most this long side, which also caps
            the overlays' size (None: full resolution).
        tile_size: width of a ``grid.png`` cell; the grid keeps only such thumbnails.
        progress: a tqdm progress bar on stderr (None: only when stderr is a terminal).
        on_skip: called with each unreadable image and the reason (default: a log warning).

    Returns:
        An :class:`ExplainSummary`; ``predictions`` are in input order, failures included.
    """
    started = time.perf_counter()
    _check_options(alpha, overlay_format, batch_size, workers, tile_size, max_side)
    explainer = artifact if isinstance(artifact, Explainer) else load_explainer(artifact)
    meta = explainer.metadata
    target = None
    if class_ is not None:
        if not meta.class_input:
            raise InputError(
                f"choosing a class needs an artifact exported with --class-input; {explainer.path} explains "
                f"its top-{meta.top_k} classes"
            )
        target = resolve_class(class_, meta)
    given = list(inputs)
    items = given if given and all(isinstance(i, ImageInput) for i in given) else collect_images(given)
    out = Path(out_dir)
    opts = _Options(out, colormap, float(alpha), overlay_format, int(tile_size), True, meta)
    overlay(np.zeros((1, 1, 3), np.uint8), np.zeros((1, 1), np.float32), colormap=colormap)  # bad colormap: now
    state = _Run(explainer, target, opts, target_size(meta), on_skip)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="gradcam-io")
    try:
        with _Bar(len(items), progress) as bar:
            batches = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
            decoding: deque[list[Future]] = deque()
            for batch in batches[:2]:
                decoding.append([pool.submit(_decode, item, meta, max_side) for item in batch])
            for index, batch in enumerate(batches):
                decoded = [f.result() for f in decoding.popleft()]
                if index + 2 < len(batches):  # keep the next batch decoding while this one runs
                    decoding.append([pool.submit(_decode, item, meta, max_side) for item in batches[index + 2]])
                state.run(pool, batch, decoded)
                state.drain(keep=2)
                bar.update(len(batch))
            state.drain(keep=0)
    finally:
        # on an error, Ctrl-C or SIGTERM: drop queued work; files being written are finished or removed
        pool.shutdown(wait=True, cancel_futures=True)
    return state.finish(time.perf_counter() - started)


class _Run:
    """The state of one :func:`explain_files` call (the main thread's side of the pipeline)."""

    def __init__(self, explainer: Explainer, target, opts: _Options, size, on_skip) -> None:
        self.explainer = explainer
        self.meta = explainer.metadata
        self.target = target
        self.opts = opts
        self.size = size
        self.on_skip = on_skip or (lambda item, reason: log.warning("skipped: %s", reason))
        self.predictions: list[Prediction] = []
        self.pending: deque[tuple[list, list[Future]]] = deque()
        self.tiles: list[tuple[np.ndarray, str, tuple[int, int, int] | None]] = []
        self.thumbnails = 0  # thumbnails asked for so far
        self.small = 0

    def run(self, pool: ThreadPoolExecutor, batch: list[ImageInput], decoded: list) -> None:
        """Run the graph on the readable images of ``batch``; queue their overlays on the pool."""
        ok = [(item, d) for item, d in zip(batch, decoded, strict=True) if not isinstance(d, Exception)]
        rows: list = [None] * len(batch)
        for i, (item, d) in enumerate(zip(batch, decoded, strict=True)):
            if isinstance(d, Exception):
                self.on_skip(item, str(d))
                rows[i] = Prediction(item.path, item.label, error=str(d))
            else:
                self._check_small(item, d[0])
        futures: list[Future] = []
        if ok:
            images = np.stack([d[1] for _, d in ok])
            classes = None if self.target is None else np.full(len(ok), self.target, np.int64)
            result = self.explainer(images, classes)
            no_tile = _Options(**{**self.opts.__dict__, "keep_tile": False})
            slots = [i for i, d in enumerate(decoded) if not isinstance(d, Exception)]
            for j, (slot, (item, (rgb, _))) in enumerate(zip(slots, ok, strict=True)):
                rows[slot] = prediction_of(item.path, item.label, result, j, self.meta)
                opts = self.opts if self.thumbnails < GRID_LIMIT else no_tile  # the grid's first 64 only
                self.thumbnails += 1
                futures.append(pool.submit(_encode, item, rgb, result.cam[j], opts))
        self.pending.append((rows, futures))

    def _check_small(self, item: ImageInput, rgb: np.ndarray) -> None:
        h, w = self.size
        if rgb.shape[0] < _SMALL * h or rgb.shape[1] < _SMALL * w:
            if not self.small:
                log.warning(
                    "%s is %dx%d, much smaller than the model's %dx%d input: it is enlarged and its map is "
                    "coarse (this warning is shown once)",
                    item.path, rgb.shape[0], rgb.shape[1], h, w,
                )  # fmt: skip
            self.small += 1

    def drain(self, *, keep: int) -> None:
        """Finish queued overlay batches until at most ``keep`` remain (the memory bound)."""
        while len(self.pending) > keep:
            rows, futures = self.pending.popleft()
            done = iter(futures)
            for row in rows:
                if row.error:
                    self.predictions.append(row)
                    continue
                paths, thumb = next(done).result()
                row = Prediction(**{**row.__dict__, "overlays": paths})
                self.predictions.append(row)
                if thumb is not None and len(self.tiles) < GRID_LIMIT:
                    self.tiles.append((thumb, tile_caption(row), tile_color(row)))

    def finish(self, seconds: float) -> ExplainSummary:
        out = self.opts.out
        csv_path = write_csv(self.predictions, out)
        grid_path = write_grid(self.tiles, out, self.opts.tile)
        failures = [p for p in self.predictions if p.error]
        wrote_overlays = len(failures) < len(self.predictions)
        return ExplainSummary(
            predictions=self.predictions,
            csv=csv_path,
            overlays_dir=out / "overlays" if wrote_overlays else None,
            grid=grid_path,
            provider=getattr(self.explainer, "provider", None)
            or f"libtorch ({getattr(self.explainer, 'device', 'cpu')})",
            seconds=seconds,
            small_images=self.small,
            failures=failures,
        )


class _Bar:
    """A tqdm bar on stderr, or nothing (not a terminal, or a single item)."""

    def __init__(self, total: int, enabled: bool | None) -> None:
        if enabled is None:
            enabled = total > 1 and sys.stderr.isatty()
        self.tqdm = None
        if enabled:
            from tqdm import tqdm

            self.tqdm = tqdm(total=total, unit="img", desc="explain", file=sys.stderr, dynamic_ncols=True)

    def __enter__(self) -> _Bar:
        return self

    def update(self, n: int) -> None:
        if self.tqdm is not None:
            self.tqdm.update(n)

    def __exit__(self, *exc) -> None:
        if self.tqdm is not None:
            self.tqdm.close()
