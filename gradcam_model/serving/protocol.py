"""Requests and responses of the explanation server, free of any web framework: parse, validate, answer.

The v1 body (``:predict`` and ``:explain``)::

    {"instances": [{"image_bytes": {"b64": "<JPEG/PNG...>"}, "class": 3}, [[[...]]]],
     "output": "png" | "jpeg" | "map_png" | "array"}

An instance is an encoded picture (``{"image_bytes": {"b64": ...}}`` or ``{"b64": ...}``),
preprocessed exactly as ``gradcam explain`` does, or an already normalized nested list
``[C][H][W]`` (also as ``{"image": [[[...]]]}``). ``class`` (index or name) chooses the
explained class of artifacts exported with a class input. Every record says which
region ``[x, y, w, h]`` of the picture was explained (:func:`explained_region`). Artifacts of a
guided method add each explained class's guided image: ``guided_png`` (a picture at the network
input's size, see :func:`~gradcam_model.runtime.visualize.guided_picture`), or ``guided``
``[3][H][W]`` floats with ``"output": "array"``. Every
problem is an :class:`~gradcam_model.errors.InputError` whose message names it; the
server answers 400. The v2 protocol is in :mod:`.v2`.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

import numpy as np

from ..contract import ArtifactMetadata
from ..errors import InputError
from ..runtime.images import DEFAULT_MAX_SIDE, decode_image, explained_region, preprocess
from ..runtime.inputs import resolve_class
from ..runtime.visualize import encode_image, guided_picture, heatmap, overlay

__all__ = [
    "OUTPUT_KINDS",
    "ServeLimits",
    "V1Batch",
    "decode_picture",
    "input_region",
    "map_levels",
    "map_png",
    "overlay_bytes",
    "parse_v1",
    "v1_response",
]

# :explain's "output": the overlay as PNG or JPEG, the map as an 8-bit grey PNG, or as floats
OUTPUT_KINDS = ("png", "jpeg", "map_png", "array")
_OUTPUT_KEYS = {"png": "png", "jpeg": "jpeg", "map_png": "map_png", "array": "cam"}
_INSTANCE_KEYS = {"image_bytes", "b64", "image", "class"}


@dataclass(frozen=True)
class ServeLimits:
    """What one request may hold; beyond these the server answers 400 before doing any work."""

    max_instances: int = 64
    max_body_bytes: int = 32 * 1024 * 1024
    max_side: int = DEFAULT_MAX_SIDE  # encoded pictures are decoded reduced to this long side
    # pictures with more pixels are refused before decoding: a 140 kB PNG of 12000x12000 zeros
    # decodes to 432 MB in 3.4 s here (OpenCV reads the limit from OPENCV_IO_MAX_IMAGE_PIXELS)
    max_pixels: int = 64_000_000


@dataclass
class V1Batch:
    """A v1 request ready to run: one batch, the class per instance, the pictures for overlays."""

    images: np.ndarray  # [N, C, H, W] float32, normalized
    classes: np.ndarray | None  # [N] int64 (-1: top class) for class-input artifacts
    pictures: list = field(default_factory=list)  # RGB uint8 per instance, None for preprocessed ones
    output: str = "png"
    regions: list = field(default_factory=list)  # (x, y, w, h) explained, per instance

    def __post_init__(self) -> None:
        if not self.regions:
            self.regions = [input_region(self.images) for _ in range(self.images.shape[0])]


def _decode_b64(text, where: str) -> bytes:
    if not isinstance(text, str):
        raise InputError(f"{where}: b64 must be a base64 string, got {type(text).__name__}")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(f"{where}: b64 is not valid base64 ({exc})") from None


def decode_picture(data: bytes, where: str, limits: ServeLimits) -> np.ndarray:
    """Encoded picture bytes to RGB ``uint8``; an :class:`InputError` naming ``where`` otherwise."""
    import cv2

    try:
        return decode_image(data, max_side=limits.max_side, source=where)
    except cv2.error as exc:  # OpenCV's size check (OPENCV_IO_MAX_IMAGE_PIXELS) and corrupt headers
        if "CV_IO_MAX_IMAGE_PIXELS" in str(exc):
            raise InputError(f"{where}: the picture has more than {limits.max_pixels} pixels") from None
        raise InputError(f"{where}: not a readable image (OpenCV: {str(exc).strip().splitlines()[-1]})") from None


def _instance(item, index: int, meta: ArtifactMetadata, limits: ServeLimits):
    """One instance to (input [C, H, W], picture or None, class or None)."""
    where = f"instances[{index}]"
    klass = None
    if isinstance(item, dict):
        unknown = sorted(set(item) - _INSTANCE_KEYS)
        if unknown:
            raise InputError(f"{where}: unknown key(s) {unknown}; expected image_bytes, b64 or image, and class")
        klass = item.get("class")
        sources = [k for k in ("image_bytes", "b64", "image") if k in item]
        if len(sources) != 1:
            raise InputError(f"{where}: give exactly one of image_bytes, b64 or image, got {sources or 'none'}")
        source = item[sources[0]]
        if sources[0] == "image_bytes":
            if not isinstance(source, dict) or set(source) != {"b64"}:
                raise InputError(f'{where}: image_bytes must be {{"b64": "<base64>"}}')
            source = source["b64"]
        if sources[0] != "image":
            rgb = decode_picture(_decode_b64(source, where), where, limits)
            return preprocess(rgb, meta), rgb, klass
        item = source
    if not isinstance(item, list):
        raise InputError(f"{where}: expected an object with image_bytes/b64/image or a nested list, got {item!r:.60}")
    try:
        array = np.asarray(item, dtype=np.float32)
    except (ValueError, TypeError):
        raise InputError(f"{where}: a preprocessed image must be a nested list of numbers [C][H][W]") from None
    if array.ndim != 3 or array.shape[0] != meta.in_channels:
        raise InputError(f"{where}: a preprocessed image must be [{meta.in_channels}][H][W], got shape {array.shape}")
    if meta.input_size is not None and tuple(array.shape[1:]) != tuple(meta.input_size):
        h, w = meta.input_size
        raise InputError(f"{where}: this artifact takes {h}x{w} images, got {array.shape[1]}x{array.shape[2]}")
    if not np.isfinite(array).all():
        raise InputError(f"{where}: the image holds NaN or Inf")
    return array, None, klass


def _class(value, index: int, meta: ArtifactMetadata) -> int:
    where = f"instances[{index}].class"
    if not meta.class_input:
        raise InputError(
            f"{where}: this artifact explains its top-{meta.top_k} classes and takes no class; "
            "export it with --class-input to choose one"
        )
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InputError(f"{where} must be a class index or name, got {value!r}")
    try:
        return resolve_class(value, meta)
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None


def parse_v1(body, meta: ArtifactMetadata, limits: ServeLimits, *, explain: bool) -> V1Batch:
    """Validate a decoded v1 JSON body into one batch (see the module docstring)."""
    if not isinstance(body, dict):
        raise InputError(f'the body must be a JSON object {{"instances": [...]}}, got {type(body).__name__}')
    allowed = {"instances", "output"} if explain else {"instances"}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InputError(f"unknown field(s) {unknown}; expected {sorted(allowed)}")
    instances = body.get("instances")
    if not isinstance(instances, list) or not instances:
        raise InputError('"instances" must be a non-empty list')
    if len(instances) > limits.max_instances:
        raise InputError(f"{len(instances)} instances in one request; at most {limits.max_instances} are allowed")
    output = body.get("output", "png")
    if output not in OUTPUT_KINDS:
        raise InputError(f'"output" must be one of {", ".join(OUTPUT_KINDS)}, got {output!r}')
    arrays, pictures, classes = [], [], []
    for i, item in enumerate(instances):
        array, picture, klass = _instance(item, i, meta, limits)
        arrays.append(array)
        pictures.append(picture)
        classes.append(-1 if klass is None else _class(klass, i, meta))
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise InputError(f"the instances of one request must have one shape to run as a batch, got {sorted(shapes)}")
    target = np.asarray(classes, np.int64) if meta.class_input else None
    images = np.stack(arrays)
    regions = [input_region(images) if p is None else explained_region(p.shape, meta) for p in pictures]
    return V1Batch(images, target, pictures, output, regions)


def input_region(images: np.ndarray) -> tuple[float, float, float, float]:
    """The region of an already preprocessed input: all of it, ``(0, 0, W, H)``."""
    return 0.0, 0.0, float(images.shape[-1]), float(images.shape[-2])


def map_levels(cam: np.ndarray) -> np.ndarray:
    """A map in ``[0, 1]`` as 256 grey levels, ``rint(255 * cam)`` (the levels overlays use)."""
    return np.rint(np.clip(np.nan_to_num(cam, nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)


def map_png(cam: np.ndarray) -> bytes:
    """One map ``[H, W]`` as an 8-bit grey PNG at the model's input size.

    zlib level 1 with every row filtered by PNG's "Sub" (each pixel minus its left
    neighbour): a map is smooth, so Sub leaves small values that compress well. For
    EfficientNet-Lite0's 224x224 maps: 0.32 ms and 7.7 kB against 0.69 ms and 9.2 kB with
    libpng's per-row filter choice (``docs/serving.md``, "Speed").
    """
    import cv2

    from ..runtime.visualize import PNG_COMPRESSION

    params = [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION]
    if hasattr(cv2, "IMWRITE_PNG_FILTER"):  # OpenCV >= 4.10; older ones keep libpng's choice
        params += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]
    ok, encoded = cv2.imencode(".png", map_levels(cam), params)
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 image
        raise InputError(f"OpenCV could not encode a {cam.shape} map as PNG")
    return encoded.tobytes()


def overlay_bytes(picture, cam, region, fmt: str, *, colormap: str = "jet", alpha: float = 0.4) -> bytes:
    """The map over the picture (over its explained ``region``; the rest dimmed) as ``fmt`` (png, jpeg);
    the heat map alone when there is no picture (a preprocessed input)."""
    if picture is None:
        image = heatmap(cam, colormap=colormap)
    else:
        image = overlay(picture, cam, colormap=colormap, alpha=alpha, region=region)
    return encode_image(image, fmt)


def _map_field(kind: str, cam, picture, region, colormap: str, alpha: float):
    if kind == "array":
        return cam.tolist()
    data = map_png(cam) if kind == "map_png" else overlay_bytes(picture, cam, region, kind, colormap=colormap,
                                                                alpha=alpha)  # fmt: skip
    return base64.b64encode(data).decode("ascii")


def _guided_field(kind: str, guided: np.ndarray, meta) -> dict:
    """``{"guided": [[[...]]]}`` (``"array"``) or ``{"guided_png": base64}`` (see ``visualize.guided_picture``)."""
    if kind == "array":
        return {"guided": guided.tolist()}
    picture = guided_picture(guided, channel_order=meta.preprocessing.channel_order)
    return {"guided_png": base64.b64encode(encode_image(picture, "png")).decode("ascii")}


def _explained(result, j: int, batch: V1Batch, *, maps: bool, colormap: str, alpha: float) -> list[dict]:
    meta = result.metadata
    rows = []
    for k, (c, s) in enumerate(zip(result.class_index[j], result.score[j], strict=True)):
        row = {"index": int(c), "label": meta.label(int(c)), "score": float(s)}
        if maps:
            row[_OUTPUT_KEYS[batch.output]] = _map_field(
                batch.output, result.cam[j, k], batch.pictures[j], batch.regions[j], colormap, alpha
            )
            if result.guided is not None:  # guided methods: the guided image, as floats or as a PNG picture
                row.update(_guided_field(batch.output, result.guided[j, k], meta))
        rows.append(row)
    return rows


TOP_CLASSES = 5  # classes each v1 record lists with their probabilities


def _top(result, j: int) -> list[dict]:
    order = np.argsort(-result.probabilities[j], kind="stable")[:TOP_CLASSES]
    return [{"index": int(c), "label": result.metadata.label(int(c)), "probability": float(result.probabilities[j, c])}
            for c in order]  # fmt: skip


def v1_response(result, batch: V1Batch, *, explain: bool, colormap: str = "jet", alpha: float = 0.4) -> dict:
    """``{"predictions": [...]}`` or ``{"explanations": [...]}``: one record per instance, in order."""
    meta = result.metadata
    records = []
    for j in range(result.probabilities.shape[0]):
        top = int(result.probabilities[j].argmax())
        records.append(
            {
                "predicted_index": top,
                "predicted_label": meta.label(top),
                "probability": float(result.probabilities[j, top]),
                "region": [float(v) for v in batch.regions[j]],
                "top": _top(result, j),
                "explained": _explained(result, j, batch, maps=explain, colormap=colormap, alpha=alpha),
            }
        )
    return {"explanations" if explain else "predictions": records}
