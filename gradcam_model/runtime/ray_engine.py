"""Explain a whole dataset on a Ray cluster: Ray Data feeds actors that each hold one ONNX Runtime session.

:func:`explain_dataset` is the Ray engine of ``gradcam explain --engine ray``. The
driver (this process) writes what the local engine writes, named and ordered the same
way (``overlays/``, a guided artifact's ``guided/``, ``predictions.csv``, ``grid.png``)
plus ``predictions.parquet``; the actors (:mod:`.ray_actor`) decode, preprocess, run and
encode. Needs the ``[ray]`` extra; ``ray`` is imported only when this engine runs.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .._atomic import write_bytes_atomic
from ..errors import ArtifactError, GradCAMError, InputError
from .explainer import load_explainer
from .images import DEFAULT_MAX_SIDE
from .inputs import ImageInput, collect_images, resolve_class
from .journal import Journal
from .outputs import (
    GRID_LIMIT,
    REGION_FIELDS,
    ExplainSummary,
    Prediction,
    overlay_name,
    tile_caption,
    tile_color,
    write_csv,
    write_grid,
)
from .pipeline import DEFAULT_TILE_SIZE, _Bar, _check_options, run_record
from .ray_actor import ExplainActor
from .ray_cluster import DEFAULT_OBJECT_STORE_MB, _cluster, import_ray, local_cluster
from .report import write_explain_report
from .visualize import overlay, thumbnail

__all__ = ["explain_dataset", "import_ray", "local_cluster", "write_parquet"]

log = logging.getLogger(__name__)


def _rows_of(items: list[tuple[int, ImageInput]]) -> list[dict]:
    # "" for no label: a None among strings does not survive Arrow -> numpy batches (it becomes "nan")
    return [{"index": i, "path": str(t.path), "key": t.key, "label": t.label or ""} for i, t in items]


def explain_dataset(
    artifact: str | os.PathLike,
    dataset_or_paths,
    out: str | os.PathLike,
    *,
    batch_size: int = 8,
    class_: int | str | None = None,
    colormap: str = "jet",
    alpha: float = 0.4,
    overlay_format: str = "jpg",
    max_side: int | None = DEFAULT_MAX_SIDE,
    tile_size: int = DEFAULT_TILE_SIZE,
    workers: int = 2,
    threads: int = 1,
    address: str | None = None,
    num_cpus: int | None = None,
    object_store_mb: int = DEFAULT_OBJECT_STORE_MB,
    overwrite: bool = False,
    resume: bool = False,
    save_maps: bool = False,
    max_restarts: int = 3,
    max_task_retries: int = 3,
    progress: bool | None = None,
    on_skip: Callable[[str, str], None] | None = None,
    embed_report: bool = False,
) -> ExplainSummary:
    """Explain images with an ``.onnx`` artifact on Ray: the local engine's outputs, plus Parquet.

    Args:
        artifact: an ``.onnx`` artifact (the workers run ONNX Runtime only: no torch).
        dataset_or_paths: image files and folders (as :func:`~gradcam_model.runtime.explain_files`
            takes), :class:`ImageInput` items, or a ``ray.data.Dataset`` with a ``path`` column and a
            ``bytes`` (encoded) or ``image`` (RGB uint8) column; then rows keep the dataset's order.
        out: output folder: ``overlays/``, ``predictions.csv``, ``predictions.parquet``, ``grid.png``,
            ``report.html``, ``maps/<key>.npy`` with ``save_maps``, ``guided/`` for a guided method's artifact.
        batch_size: images per actor call.
        class_, colormap, alpha, overlay_format, max_side, tile_size: as for ``explain_files``.
        workers: actors, each holding one ONNX Runtime session.
        threads: ONNX Runtime threads per actor, also the CPUs each actor asks Ray for.
        address: an existing cluster (``auto``, ``ray://HOST:PORT``); None starts a local one on
            loopback and shuts it down. A session the caller already opened is used as is.
        num_cpus, object_store_mb: the local cluster's size (ignored with ``address``).
        overwrite: replace the outputs of an earlier run in ``out`` (else refuse).
        resume: continue the interrupted run in ``out`` (file inputs only; see
            :mod:`~gradcam_model.runtime.journal`): the images it finished are skipped.
        save_maps: also write each image's maps as ``maps/<key>.npy`` (float32 ``[K, H, W]``).
        max_restarts, max_task_retries: how often Ray restarts a dead actor and retries its batch.
        progress: a tqdm bar on stderr (None: only when stderr is a terminal).
        on_skip: called with each failed image's path and reason (default: a log warning).
        embed_report: write the pictures into ``report.html`` (else it refers to them).

    Returns:
        An :class:`ExplainSummary`; ``predictions`` in input order, each input exactly once.
    """
    started = time.perf_counter()
    _check_ray_options(alpha, overlay_format, batch_size, workers, tile_size, max_side, threads, object_store_mb)
    out = Path(out)
    meta, target = _artifact_and_target(artifact, class_)
    overlay(np.zeros((1, 1, 3), np.uint8), np.zeros((1, 1), np.float32), colormap=colormap)  # bad colormap: now
    ray = import_ray()
    items = _items(ray, dataset_or_paths, resume)  # None: a Ray Dataset
    kwargs = {"threads": threads, "max_side": max_side, "colormap": colormap, "alpha": float(alpha),
              "ext": overlay_format, "target": target, "include_maps": save_maps}  # fmt: skip
    record = run_record(artifact, "ray", target, colormap, alpha, overlay_format, max_side, tile_size, save_maps)
    names = ["<a Ray Dataset>"] if items is None else [str(i.path) for i in items]
    journal = Journal(out, record, names, overwrite=overwrite, resume=resume)
    finished = False
    try:
        with _cluster(address, num_cpus, object_store_mb):
            journal.open()  # once the cluster is up: a failed connection leaves nothing behind
            run = _Collector(out, meta, overlay_format, save_maps, on_skip or _log_skip, items, journal)
            pool = (batch_size, workers, threads, max_restarts, max_task_retries)
            _feed(ray, artifact, dataset_or_paths, items, run, kwargs, pool, progress)
        summary = _summary(run, out, meta, (workers, threads), colormap, int(tile_size), len(journal.done))
        summary.seconds = time.perf_counter() - started
        summary.report = write_explain_report(summary, out, meta, embed=embed_report)
        finished = True
    finally:
        journal.close(finished=finished)
    return summary


def _check_ray_options(alpha, overlay_format, batch_size, workers, tile_size, max_side, threads, object_store_mb):
    """The local engine's option checks, and the Ray engine's own counts."""
    _check_options(alpha, overlay_format, batch_size, workers, tile_size, max_side)
    for name, value in (("threads", threads), ("object_store_mb", object_store_mb)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}")


def _feed(ray, artifact, dataset_or_paths, items, run, kwargs, pool: tuple, progress) -> None:
    """Run the inputs the journal has not done yet (a Ray Dataset: all of it) through the actors, handing each
    result table to ``run``; ``pool`` is ``(batch_size, workers, threads, max_restarts, max_task_retries)``."""
    done = run.journal.done
    todo = None if items is None else [(i, t) for i, t in enumerate(items) if i not in done]
    with _Bar(len(items) if items else 0, progress) as bar:
        bar.update(len(done))
        if todo is None or todo:
            for table in _execute(ray, artifact, dataset_or_paths if todo is None else todo, kwargs, *pool):
                bar.update(run.add(table))


def _log_skip(path: str, reason: str) -> None:
    log.warning("skipped: %s", reason)


def _items(ray, dataset_or_paths, resume: bool) -> list | None:
    """The inputs as :class:`ImageInput` items in order, or None for a ``ray.data.Dataset``."""
    if not isinstance(dataset_or_paths, ray.data.Dataset):
        given = list(dataset_or_paths)
        return given if given and all(isinstance(i, ImageInput) for i in given) else collect_images(given)
    if resume:
        raise InputError("resume needs image files and folders as inputs; a Ray Dataset cannot be resumed")
    return None


def _artifact_and_target(artifact, class_):
    """The artifact's metadata (an ``.onnx`` one: the workers run ONNX Runtime) and the class to explain, if any."""
    if Path(artifact).suffix.lower() != ".onnx":
        raise ArtifactError(f"{artifact}: the Ray engine runs .onnx artifacts (ONNX Runtime, no torch in the workers)")
    meta = load_explainer(artifact, providers=["CPUExecutionProvider"]).metadata
    if class_ is None:
        return meta, None
    if not meta.class_input:
        raise InputError(
            f"choosing a class needs an artifact exported with --class-input; {artifact} explains "
            f"its top-{meta.top_k} classes"
        )
    return meta, resolve_class(class_, meta)


def _summary(run, out: Path, meta, pool: tuple, colormap: str, tile_size: int, resumed: int) -> ExplainSummary:
    """The CSV, grid and Parquet of a finished run on ``pool`` = ``(workers, threads)``, and its summary
    (``seconds`` and ``report`` still to set)."""
    workers, threads = pool
    engine = f"Ray ({workers} actor{'s' * (workers > 1)} x {threads} thread{'s' * (threads > 1)}"
    predictions = run.finish()
    tiles = _tiles(predictions, colormap, tile_size)
    failures = [p for p in predictions if p.error]
    return ExplainSummary(
        predictions=predictions,
        csv=write_csv(predictions, out),
        overlays_dir=out / "overlays" if len(failures) < len(predictions) else None,
        grid=write_grid(tiles, out, tile_size),
        provider=f"{engine}, {', '.join(sorted(run.providers)) or 'no images'})",
        seconds=0.0,
        small_images=run.small,
        failures=failures,
        parquet=write_parquet(predictions, out / "predictions.parquet"),
        actor_seconds=run.actor_seconds,
        actor_peak_mb=run.actor_peak_mb,
        grid_tiles=len(tiles),
        resumed=resumed,
    )


def _execute(ray, artifact, source, kwargs, batch_size, workers, threads, max_restarts, max_task_retries):
    """Yield the actors' result tables as they arrive (a streaming execution, bounded memory)."""
    context = ray.data.DataContext.get_current()
    options = context.execution_options
    saved = (options.preserve_order, context.enable_progress_bars, context.print_on_execution_start)
    try:
        context.enable_progress_bars = False  # the driver has its own bar
        context.print_on_execution_start = False
        if isinstance(source, list):
            blocks = max(1, min(len(source), math.ceil(len(source) / batch_size)))
            dataset = ray.data.from_items(_rows_of(source), override_num_blocks=blocks)
        else:
            options.preserve_order = True  # no index column: the arrival order is the dataset's order
            dataset = source
        model = ray.put(Path(artifact).read_bytes())  # to every node through the object store
        with warnings.catch_warnings():
            # ray 2.60 deprecates passing max_restarts/max_task_retries as ray_remote_args, with no named
            # alternative yet; without them Ray Data retries a dying actor's batch forever
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            explained = dataset.map_batches(
                ExplainActor,
                fn_constructor_kwargs={"artifact": model, **kwargs},
                compute=ray.data.ActorPoolStrategy(size=workers),
                batch_size=batch_size,
                batch_format="numpy",
                num_cpus=threads,
                max_restarts=max_restarts,
                max_task_retries=max_task_retries,
            )
        yield from explained.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=1)
    finally:
        options.preserve_order, context.enable_progress_bars, context.print_on_execution_start = saved


class _Collector:
    """The driver's side: write each result's overlays (and maps), keep its row, check exactly-once."""

    def __init__(self, out: Path, meta, ext: str, save_maps: bool, on_skip, items, journal: Journal) -> None:
        self.out, self.meta, self.ext, self.save_maps, self.on_skip = out, meta, ext, save_maps, on_skip
        self.expected = len(items) if items is not None else None
        self.journal = journal
        self.rows: dict[int, Prediction] = dict(journal.done)
        self.keys: dict[str, int] = {}
        self.small = 0
        self.duplicates = 0
        self.arrived = 0
        self.actor_seconds = 0.0
        self.actor_peak_mb = 0.0
        self.providers: set[str] = set()

    def _key(self, path: str) -> str:
        """Dataset rows: the file's stem, made unique in arrival order as ``collect_images`` does."""
        stem = Path(path).stem or "image"
        self.keys[stem] = self.keys.get(stem, 0) + 1
        return stem if self.keys[stem] == 1 else f"{stem}-{self.keys[stem]}"

    def add(self, table) -> int:
        for row in table.to_pylist():
            index = row["index"]
            if index < 0:  # dataset rows arrive in the dataset's order (preserve_order)
                index, self.arrived = self.arrived, self.arrived + 1
            if index in self.rows:  # a retried batch delivered twice: keep the first
                self.duplicates += 1
                log.warning("%s arrived twice from the cluster; kept once", row["path"])
                continue
            self.actor_seconds += row["actor_seconds"]
            self.actor_peak_mb = max(self.actor_peak_mb, row["actor_peak_mb"])
            self.providers.add(row["actor_provider"])
            self.rows[index] = self._prediction(row)
            self.journal.add([(index, self.rows[index])])  # after its files: a row in the journal is an image done
        return table.num_rows

    def _prediction(self, row: dict) -> Prediction:
        path, label = Path(row["path"]), row["label"]
        if row["error"]:
            self.on_skip(row["path"], row["error"])
            return Prediction(path, label, error=row["error"])
        key = row["key"] or self._key(row["path"])
        paths = []
        for k, data in enumerate(row["overlay_data"]):
            target = self.out / "overlays" / overlay_name(key, k, self.ext)
            write_bytes_atomic(target, data, overwrite=True)
            paths.append(target)
        for k, data in enumerate(row.get("guided_data") or []):  # a guided artifact: as the local engine's guided/
            write_bytes_atomic(self.out / "guided" / overlay_name(key, k, self.ext), data, overwrite=True)
        if self.save_maps:
            write_bytes_atomic(self.out / "maps" / f"{key}.npy", row["cam_npy"], overwrite=True)
        self.small += bool(row["small"])
        return Prediction(
            path,
            label,
            predicted_index=row["predicted_index"],
            predicted_label=row["predicted_label"],
            probability=row["probability"],
            explained_index=tuple(row["explained_index"]),
            explained_label=tuple(row["explained_label"]),
            explained_score=tuple(row["explained_score"]),
            region=tuple(row["region"]),
            overlays=tuple(paths),
        )

    def finish(self) -> list[Prediction]:
        expected = self.expected if self.expected is not None else len(self.rows)
        missing = sorted(set(range(expected)) - set(self.rows))
        if missing:  # Ray Data gave up on a batch without raising: never hand back a silently short table
            raise GradCAMError(f"the Ray cluster returned no result for {len(missing)} of {expected} inputs")
        return [self.rows[i] for i in range(expected)]


def _tiles(predictions: list[Prediction], colormap: str, tile: int) -> list:
    """grid.png's cells: thumbnails of the first written overlays (read back from disk)."""
    from .images import load_image

    tiles = []
    for row in predictions:
        if len(tiles) >= GRID_LIMIT:
            break
        if row.overlays:
            tiles.append((thumbnail(load_image(row.overlays[0]), tile), tile_caption(row), tile_color(row)))
    return tiles


def write_parquet(predictions: Sequence[Prediction], path: Path) -> Path:
    """``predictions.parquet``: the CSV's rows with typed columns (lists for the explained classes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([
        ("path", pa.string()), ("true_label", pa.string()), ("predicted_index", pa.int64()),
        ("predicted_label", pa.string()), ("probability", pa.float64()), ("explained_index", pa.list_(pa.int64())),
        ("explained_label", pa.list_(pa.string())), ("explained_score", pa.list_(pa.float64())),
        *((k, pa.float64()) for k in REGION_FIELDS), ("overlay", pa.list_(pa.string())), ("error", pa.string()),
    ])  # fmt: skip
    columns = {
        "path": [str(p.path) for p in predictions],
        "true_label": [p.true_label for p in predictions],
        "predicted_index": [p.predicted_index for p in predictions],
        "predicted_label": [p.predicted_label or None for p in predictions],
        "probability": [p.probability for p in predictions],
        "explained_index": [list(p.explained_index) for p in predictions],
        "explained_label": [list(p.explained_label) for p in predictions],
        "explained_score": [list(p.explained_score) for p in predictions],
        **{k: [None if p.region is None else p.region[i] for p in predictions] for i, k in enumerate(REGION_FIELDS)},
        "overlay": [[str(o) for o in p.overlays] for p in predictions],
        "error": [p.error or None for p in predictions],
    }
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(columns, schema=schema), sink)
    write_bytes_atomic(path, sink.getvalue().to_pybytes(), overwrite=True)
    return path
