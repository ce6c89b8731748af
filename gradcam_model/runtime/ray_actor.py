"""The Ray engine's worker side: one actor holds one ONNX Runtime session and explains batches of rows.

Runs inside Ray worker processes and imports only the serve side (numpy, OpenCV,
ONNX Runtime, pyarrow): never torch. Each batch is decoded and preprocessed with the
functions the local engine uses (:func:`~gradcam_model.runtime.load_image`,
:func:`~gradcam_model.runtime.decode_image`, :func:`~gradcam_model.runtime.preprocess`),
its rows are built with :func:`~gradcam_model.runtime.outputs.prediction_of`, and its
overlays (and a guided artifact's guided pictures) are composed and encoded here; the
driver only writes the bytes it gets back.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from ..contract import GUIDED_OUTPUT, output_names
from ..errors import InputError
from .explainer import OnnxExplainer
from .images import decode_image, load_image, preprocess, target_size
from .outputs import prediction_of
from .pipeline import map_bytes
from .visualize import encode_image, guided_picture, overlay

__all__ = ["CRASH_ONCE_ENV", "ExplainActor", "result_schema"]

# Fault injection for tests and drills: when this variable names a file that does not exist yet,
# the first actor to finish a batch creates the file and then dies (os._exit) before returning it.
CRASH_ONCE_ENV = "GRADCAM_RAY_CRASH_ONCE"
_SMALL = 0.5  # as the local engine: pictures under half the input size on a side are counted


def result_schema(include_maps: bool, guided: bool = False):
    """The Arrow schema of the rows an :class:`ExplainActor` returns (``guided``: an artifact of a guided method,
    whose rows also carry each explained class's guided picture, encoded)."""
    import pyarrow as pa

    fields = [
        ("index", pa.int64()),
        ("path", pa.string()),
        ("key", pa.string()),
        ("label", pa.string()),
        ("predicted_index", pa.int64()),
        ("predicted_label", pa.string()),
        ("probability", pa.float64()),
        ("explained_index", pa.list_(pa.int64())),
        ("explained_label", pa.list_(pa.string())),
        ("explained_score", pa.list_(pa.float64())),
        ("region", pa.list_(pa.float64())),  # x, y, w, h (explained_region)
        ("overlay_data", pa.list_(pa.binary())),
        ("small", pa.bool_()),
        ("error", pa.string()),
        ("actor_seconds", pa.float64()),
        ("actor_peak_mb", pa.float64()),
        ("actor_provider", pa.string()),
    ]
    if include_maps:
        fields.append(("cam_npy", pa.binary()))
    if guided:
        fields.append(("guided_data", pa.list_(pa.binary())))
    return pa.schema(fields)


def _column(batch: dict, name: str, n: int, default=None) -> list:
    values = batch.get(name)
    return [default] * n if values is None else list(values)


def _text(value) -> str | None:
    """A string cell of a numpy batch; None for a missing value (None, NaN or "")."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return (value.decode() if isinstance(value, bytes) else str(value)) or None


class ExplainActor:
    """A Ray Data callable class: ``map_batches(ExplainActor, fn_constructor_kwargs=...)``.

    Input rows hold ``path`` (read here), or ``path`` and ``bytes`` (encoded image,
    e.g. from ``ray.data.read_binary_files(..., include_paths=True)``), or ``path`` and
    ``image`` (RGB ``uint8 [H, W, 3]``, e.g. from ``ray.data.read_images``); optional
    ``index``, ``key`` and ``label`` columns. Output rows follow :func:`result_schema`:
    one per input row, failures included.
    """

    def __init__(
        self,
        artifact,
        *,
        threads: int,
        max_side: int | None,
        colormap: str,
        alpha: float,
        ext: str,
        target: int | None,
        include_maps: bool,
        providers: list[str] | None = None,
    ) -> None:
        if not isinstance(artifact, (bytes, bytearray)):  # an ObjectRef: the driver put the file in the store once
            import ray

            artifact = ray.get(artifact)
        # the session reads the model from a private file, removed as soon as the session exists
        folder = tempfile.mkdtemp(prefix="gradcam-actor-")
        path = Path(folder) / "artifact.onnx"
        path.write_bytes(artifact)
        try:
            self.explainer = OnnxExplainer(path, providers=providers, threads=threads)
        finally:
            path.unlink(missing_ok=True)
            os.rmdir(folder)
        self.meta = self.explainer.metadata
        self.size = target_size(self.meta)
        self.max_side = max_side
        self.colormap, self.alpha, self.ext = colormap, alpha, ext
        self.target = target
        self.include_maps = include_maps
        self.schema = result_schema(include_maps, GUIDED_OUTPUT in output_names(self.meta.method))

    def _decode(self, path: str, data, image):
        """The picture and the model input, or the error message (never raises for one bad image)."""
        try:
            if image is not None:
                rgb = np.asarray(image)
            elif data is not None:
                rgb = decode_image(bytes(data), max_side=self.max_side, source=path)
            else:
                rgb = load_image(path, max_side=self.max_side)
            return rgb, preprocess(rgb, self.meta)
        except InputError as exc:
            return str(exc)
        except Exception as exc:  # noqa: BLE001 - one odd file must not fail the job: it becomes its row's error
            return f"{path}: {type(exc).__name__}: {exc}"

    def _run(self, images: list[np.ndarray]):
        """Explain ``images``; when the batch fails, one by one, so only the culprit gets an error."""
        classes = None if self.target is None else np.full(len(images), self.target, np.int64)
        try:
            result = self.explainer(np.stack(images), classes)
            return [(result, j) for j in range(len(images))]
        except Exception:  # noqa: BLE001 - isolate the image that breaks the batch
            done = []
            for image in images:
                try:
                    one = None if classes is None else classes[:1]
                    done.append((self.explainer(image[None], one), 0))
                except Exception as exc:  # noqa: BLE001
                    done.append(f"explaining failed: {type(exc).__name__}: {exc}")
            return done

    def __call__(self, batch: dict) -> object:
        import pyarrow as pa

        started = time.perf_counter()
        paths = [_text(p) for p in batch["path"]]
        n = len(paths)
        data, images = _column(batch, "bytes", n), _column(batch, "image", n)
        decoded = [self._decode(paths[i], data[i], images[i]) for i in range(n)]
        ok = [i for i in range(n) if not isinstance(decoded[i], str)]
        outcomes = dict(zip(ok, self._run([decoded[i][1] for i in ok]), strict=True)) if ok else {}
        rows = []
        for i in range(n):
            outcome = decoded[i] if isinstance(decoded[i], str) else outcomes[i]
            rows.append(self._row(paths[i], outcome, decoded[i]))
        columns = {
            "index": _column(batch, "index", n, -1),
            "path": paths,
            "key": [_text(k) for k in _column(batch, "key", n)],
            "label": [_text(v) for v in _column(batch, "label", n)],
        }
        for name in self.schema.names[4:]:
            if not name.startswith("actor_"):
                columns[name] = [r.get(name) for r in rows]
        columns["actor_seconds"] = [(time.perf_counter() - started) / n] * n
        columns["actor_peak_mb"] = [_peak_mb()] * n
        columns["actor_provider"] = [self.explainer.provider] * n
        table = pa.table(columns, schema=self.schema)
        _maybe_crash()
        return table

    def _row(self, path: str, outcome, decoded) -> dict:
        if isinstance(outcome, str):
            return {"error": outcome, "overlay_data": [], "explained_index": [], "explained_label": [],
                    "explained_score": [], "small": False}  # fmt: skip
        result, j = outcome
        rgb = decoded[0]
        p = prediction_of(Path(path), None, result, j, self.meta, rgb.shape)
        cams = result.cam[j]
        region = p.region
        pictures = [encode_image(overlay(rgb, cams[k], colormap=self.colormap, alpha=self.alpha, region=region),
                                 self.ext) for k in range(cams.shape[0])]  # fmt: skip
        h, w = self.size
        row = {
            "predicted_index": p.predicted_index,
            "predicted_label": p.predicted_label,
            "probability": p.probability,
            "explained_index": list(p.explained_index),
            "explained_label": list(p.explained_label),
            "explained_score": list(p.explained_score),
            "region": list(p.region),
            "overlay_data": pictures,
            "small": bool(rgb.shape[0] < _SMALL * h or rgb.shape[1] < _SMALL * w),
            "error": "",
        }
        if self.include_maps:
            row["cam_npy"] = map_bytes(cams)  # the local engine's format (pipeline.map_bytes)
        if result.guided is not None:  # the local engine's guided/ pictures (pipeline._encode)
            order = self.meta.preprocessing.channel_order
            row["guided_data"] = [encode_image(guided_picture(g, channel_order=order), self.ext)
                                  for g in result.guided[j]]  # fmt: skip
        return row


def _peak_mb() -> float:
    """This process's peak resident memory (VmHWM) in MB; 0 where /proc is unavailable."""
    try:
        with open("/proc/self/status") as f:
            return next((int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:")), 0.0)
    except OSError:
        return 0.0


def _maybe_crash() -> None:
    """Die once, after a batch's work and before its result is returned (see :data:`CRASH_ONCE_ENV`)."""
    marker = os.environ.get(CRASH_ONCE_ENV)
    if not marker:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    os._exit(1)
