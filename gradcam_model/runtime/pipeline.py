"""Explain image files end to end: decode, batch, run, overlays, grid and CSV, streaming.

:func:`explain_files` is what ``gradcam explain`` runs, and what a server or a batch
engine can call. While ONNX Runtime runs batch *i* on the calling thread, worker
threads decode and preprocess batch *i + 1* and compose and encode the overlays of
batch *i - 1*; at most two batches wait on each side, so memory does not grow with
the number of images. Every file is written atomically.
"""

from __future__ import annotations

import io
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
from .journal import Journal, artifact_digest
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
from .report import write_explain_report
from .visualize import OVERLAY_FORMATS, check_alpha, encode_image, guided_picture, overlay, thumbnail

__all__ = ["CSV_FIELDS", "ExplainSummary", "Prediction", "explain_files", "map_bytes", "run_record"]

log = logging.getLogger(__name__)

DEFAULT_TILE_SIZE = 256
_SMALL = 0.5  # pictures under half the model's input size on a side get a warning (once)
_SQUASH = 2.0  # a stretch that changes a picture's aspect ratio by more than this: one warning per run


@dataclass(frozen=True)
class _Options:
    out: Path
    colormap: str
    alpha: float
    ext: str
    tile: int
    keep_tile: bool
    save_maps: bool = False
    tiles_dir: Path | None = None  # the journal's lossless copies of grid thumbnails (resume)
    meta: ArtifactMetadata | None = None  # where the maps lie in each picture (explained_region)
    embed_report: bool = False  # report.html holds the pictures (runtime.report)


def _decode(item: ImageInput, meta, max_side: int | None):
    """Worker: the picture and the model input, or the error."""
    try:
        rgb = load_image(item.path, max_side=max_side)
        return rgb, preprocess(rgb, meta)
    except InputError as exc:
        return exc


def map_bytes(cams: np.ndarray) -> bytes:
    """``maps/<key>.npy``: one image's maps as float32 ``[K, H, W]`` (both engines write this)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(cams, np.float32))
    return buffer.getvalue()


def _encode(index: int, item: ImageInput, rgb: np.ndarray, cams: np.ndarray, opts: _Options, guided=None):
    """Worker: compose, encode and write the overlays (and maps) of one image; a grid thumbnail of the first.

    ``guided`` ``[K, 3, H, W]`` (guided methods): each class's guided image also goes to
    ``guided/`` under the overlay's name, at the network input's size (see ``guided_picture``).
    """
    paths, thumb = [], None
    for k in range(cams.shape[0]):
        if guided is not None:
            order = opts.meta.preprocessing.channel_order if opts.meta is not None else "RGB"
            picture = guided_picture(guided[k], channel_order=order)
            write_bytes_atomic(opts.out / "guided" / overlay_name(item.key, k, opts.ext),
                               encode_image(picture, opts.ext), overwrite=True)  # fmt: skip
        region = explained_region(rgb.shape, opts.meta) if opts.meta is not None else None
        picture = overlay(rgb, cams[k], colormap=opts.colormap, alpha=opts.alpha, region=region)
        path = opts.out / "overlays" / overlay_name(item.key, k, opts.ext)
        write_bytes_atomic(path, encode_image(picture, opts.ext), overwrite=True)
        paths.append(path)
        if k == 0 and opts.keep_tile:
            thumb = thumbnail(picture, opts.tile)
            if opts.tiles_dir is not None:
                write_bytes_atomic(opts.tiles_dir / f"{index}.png", encode_image(thumb, "png"), overwrite=True)
    if opts.save_maps:
        write_bytes_atomic(opts.out / "maps" / f"{item.key}.npy", map_bytes(cams), overwrite=True)
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
    save_maps: bool = False,
    overwrite: bool = False,
    resume: bool = False,
    embed_report: bool = False,
) -> ExplainSummary:
    """Explain image files with an artifact; write overlays, ``grid.png``, ``predictions.csv`` and ``report.html``.

    Artifacts of a guided method also get ``guided/``: each overlay's guided image under its name.

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
        save_maps: also write each image's maps as ``maps/<key>.npy`` (float32 ``[K, H, W]``).
        overwrite: replace the outputs of an earlier run in ``out_dir`` (else refuse, see
            :mod:`~gradcam_model.runtime.journal`).
        resume: continue the interrupted run in ``out_dir`` (same artifact and options): the
            images it finished are skipped, and the outputs are those of an uninterrupted run.
        embed_report: write the pictures into ``report.html`` (else it refers to them).

    Returns:
        An :class:`ExplainSummary`; ``predictions`` are in input order, failures included.
        Interrupted (SIGTERM, Ctrl-C), the finished images keep their overlays and their rows in
        ``predictions.partial.csv``.
    """
    started = time.perf_counter()
    _check_options(alpha, overlay_format, batch_size, workers, tile_size, max_side)
    explainer = artifact if isinstance(artifact, Explainer) else load_explainer(artifact)
    meta = explainer.metadata
    target = _target(explainer, class_)
    given = list(inputs)
    items = given if given and all(isinstance(i, ImageInput) for i in given) else collect_images(given)
    out = Path(out_dir)
    overlay(np.zeros((1, 1, 3), np.uint8), np.zeros((1, 1), np.float32), colormap=colormap)  # bad colormap: now
    record = run_record(explainer.path, "local", target, colormap, alpha, overlay_format, max_side, tile_size,
                        save_maps)  # fmt: skip
    record["batch_size"] = batch_size  # the same batches: bit-identical maps (ONNX Runtime's rounding)
    journal = Journal(out, record, [str(i.path) for i in items], overwrite=overwrite, resume=resume).open()
    opts = _Options(out, colormap, float(alpha), overlay_format, int(tile_size), True, save_maps, journal.tiles_dir,
                    meta, embed_report)  # fmt: skip
    state = _Run(explainer, target, opts, target_size(meta), on_skip, journal)
    todo = [(i, item) for i, item in enumerate(items) if i not in journal.done]
    pool = ThreadPoolExecutor(workers, thread_name_prefix="gradcam-io")
    finished = False
    try:
        _run_batches(state, pool, todo, len(items), batch_size=batch_size, max_side=max_side, progress=progress)
        summary = state.finish(len(items), time.perf_counter() - started)
        finished = True
        return summary
    finally:
        # on an error, Ctrl-C or SIGTERM: drop queued work; files being written are finished or removed;
        # the rows of the images finished so far stay in the journal (resume continues from them)
        pool.shutdown(wait=True, cancel_futures=True)
        journal.close(finished=finished)


def _target(explainer: Explainer, class_: int | str | None) -> int | None:
    """The class index every picture is explained for (None: each picture's top class)."""
    if class_ is None:
        return None
    meta = explainer.metadata
    if not meta.class_input:
        raise InputError(f"choosing a class needs an artifact exported with --class-input; {explainer.path} "
                         f"explains its top-{meta.top_k} classes")  # fmt: skip
    return resolve_class(class_, meta)


def _run_batches(state: _Run, pool: ThreadPoolExecutor, todo: list, total: int, *, batch_size, max_side, progress):
    """The ``todo`` ``(index, item)`` pairs of ``total`` images in batches, each through the explainer while the
    next two decode; finished encodes drain as it goes."""
    meta = state.meta
    log.info("preprocessing: %s", meta.preprocessing.describe(state.size))  # shown by --verbose
    with _Bar(total, progress) as bar:
        bar.update(total - len(todo))
        batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
        decoding: deque[list[Future]] = deque()
        for batch in batches[:2]:
            decoding.append([pool.submit(_decode, item, meta, max_side) for _, item in batch])
        for index, batch in enumerate(batches):
            decoded = [f.result() for f in decoding.popleft()]
            if index + 2 < len(batches):  # keep the next batch decoding while this one runs
                decoding.append([pool.submit(_decode, item, meta, max_side) for _, item in batches[index + 2]])
            state.run(pool, batch, decoded)
            state.drain(keep=2)
            bar.update(len(batch))
        state.drain(keep=0)


def run_record(artifact, engine, target, colormap, alpha, overlay_format, max_side, tile_size, save_maps) -> dict:
    """What decides a run's outputs: a resumed run must match it (the journal keeps it)."""
    return {
        "artifact_sha256": artifact_digest(artifact),
        "engine": engine,
        "class": target,
        "colormap": colormap,
        "alpha": float(alpha),
        "overlay_format": overlay_format,
        "max_side": max_side,
        "tile_size": int(tile_size),
        "save_maps": bool(save_maps),
    }


class _Run:
    """The state of one :func:`explain_files` call (the main thread's side of the pipeline)."""

    def __init__(self, explainer: Explainer, target, opts: _Options, size, on_skip, journal: Journal) -> None:
        self.explainer = explainer
        self.meta = explainer.metadata
        self.target = target
        self.opts = opts
        self.size = size
        self.on_skip = on_skip or (lambda item, reason: log.warning("skipped: %s", reason))
        self.journal = journal
        self.predictions: dict[int, Prediction] = dict(journal.done)  # by input index
        self.pending: deque[tuple[list, list, list[Future]]] = deque()
        self.tiles: dict[int, np.ndarray] = {}  # grid thumbnails made by this run, by input index
        self.thumbnails = sum(1 for p in journal.done.values() if not p.error)  # thumbnails asked for so far
        self.small = 0
        self.squashed = 0  # pictures a stretch distorts by more than _SQUASH

    def run(self, pool: ThreadPoolExecutor, batch: list[tuple[int, ImageInput]], decoded: list) -> None:
        """Run the graph on the readable images of ``batch``; queue their overlays on the pool."""
        indices = [i for i, _ in batch]
        batch = [item for _, item in batch]
        ok = [(item, d) for item, d in zip(batch, decoded, strict=True) if not isinstance(d, Exception)]
        rows: list = [None] * len(batch)
        for i, (item, d) in enumerate(zip(batch, decoded, strict=True)):
            if isinstance(d, Exception):
                self.on_skip(item, str(d))
                rows[i] = Prediction(item.path, item.label, error=str(d))
            else:
                self._check_small(item, d[0])
                self._check_aspect(d[0])
        futures: list[Future] = []
        if ok:
            images = np.stack([d[1] for _, d in ok])
            classes = None if self.target is None else np.full(len(ok), self.target, np.int64)
            result = self.explainer(images, classes)
            no_tile = _Options(**{**self.opts.__dict__, "keep_tile": False})
            slots = [i for i, d in enumerate(decoded) if not isinstance(d, Exception)]
            for j, (slot, (item, (rgb, _))) in enumerate(zip(slots, ok, strict=True)):
                rows[slot] = prediction_of(item.path, item.label, result, j, self.meta, rgb.shape)
                opts = self.opts if self.thumbnails < GRID_LIMIT else no_tile  # the grid's first 64 only
                self.thumbnails += 1
                guided = None if result.guided is None else result.guided[j]
                futures.append(pool.submit(_encode, indices[slot], item, rgb, result.cam[j], opts, guided))
        self.pending.append((indices, rows, futures))

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
            indices, rows, futures = self.pending.popleft()
            done = iter(futures)
            finished = []
            for index, row in zip(indices, rows, strict=True):
                if not row.error:
                    paths, thumb = next(done).result()
                    row = Prediction(**{**row.__dict__, "overlays": paths})
                    if thumb is not None:
                        self.tiles[index] = thumb
                finished.append((index, row))
            self.predictions.update(finished)
            self.journal.add(finished)  # after the batch's files: a row in the journal is an image done

    def _grid_tiles(self, rows: list[Prediction]) -> list:
        """grid.png's cells: the first explained images in input order (resumed ones from the journal)."""
        tiles = []
        for index, row in enumerate(rows):
            if len(tiles) >= GRID_LIMIT:
                break
            if not row.error:
                thumb = self.tiles.get(index)
                thumb = self.journal.tile(index) if thumb is None else thumb
                if thumb is not None:
                    tiles.append((thumb, tile_caption(row), tile_color(row)))
        return tiles

    def _check_aspect(self, rgb: np.ndarray) -> None:
        if self.meta.preprocessing.resize != "stretch":
            return
        h, w = self.size
        change = (rgb.shape[1] / rgb.shape[0]) / (w / h)
        if change > _SQUASH or change < 1 / _SQUASH:
            self.squashed += 1

    def finish(self, total: int, seconds: float) -> ExplainSummary:
        if self.squashed:
            log.warning(
                "%d picture(s) have an aspect ratio more than %gx from the model's %dx%d input: the artifact records "
                "a stretch, so they were squashed (export with --resize shorter to keep the aspect ratio and crop)",
                self.squashed, _SQUASH, *self.size,
            )  # fmt: skip
        out = self.opts.out
        predictions = [self.predictions[i] for i in range(total)]
        csv_path = write_csv(predictions, out)
        tiles = self._grid_tiles(predictions)
        grid_path = write_grid(tiles, out, self.opts.tile)
        failures = [p for p in predictions if p.error]
        wrote_overlays = len(failures) < len(predictions)
        summary = ExplainSummary(
            predictions=predictions,
            csv=csv_path,
            overlays_dir=out / "overlays" if wrote_overlays else None,
            grid=grid_path,
            provider=getattr(self.explainer, "provider", None)
            or f"libtorch ({getattr(self.explainer, 'device', 'cpu')})",
            seconds=seconds,
            small_images=self.small,
            failures=failures,
            grid_tiles=len(tiles),
            resumed=len(self.journal.done),
        )
        summary.report = write_explain_report(summary, out, self.meta, embed=self.opts.embed_report)
        return summary


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
