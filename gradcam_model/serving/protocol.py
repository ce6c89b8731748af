"""Requests and responses of the explanation server, free of any web framework: parse, validate, answer.

The v1 body (``:predict`` and ``:explain``)::

    {"instances": [{"image_bytes": {"b64": "<JPEG/PNG...>"}, "class": 3}, [[[...]]]],
     "output": "png" | "array"}

An instance is an encoded picture (``{"image_bytes": {"b64": ...}}`` or ``{"b64": ...}``),
preprocessed exactly as ``gradcam explain`` does, or an already normalized nested list
``[C][H][W]`` (also as ``{"image": [[[...]]]}``). ``class`` (index or name) chooses the
explained class of artifacts exported with a class input. Every problem is an
:class:`~gradcam_model.errors.InputError` whose message names it; the server answers 400.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

import numpy as np

from ..contract import INPUT_NAMES, OUTPUT_NAMES, ArtifactMetadata
from ..errors import InputError
from ..runtime.images import DEFAULT_MAX_SIDE, decode_image, explained_region, preprocess
from ..runtime.inputs import resolve_class
from ..runtime.visualize import encode_image, heatmap, overlay

__all__ = [
    "OUTPUT_KINDS",
    "ServeLimits",
    "V1Batch",
    "parse_v1",
    "v1_response",
    "v2_tensors",
    "v2_inputs",
    "v2_metadata",
]

OUTPUT_KINDS = ("png", "array")
_INSTANCE_KEYS = {"image_bytes", "b64", "image", "class"}
_V2_TYPES = {"image": ("FP32", "FP64"), "target_class": ("INT64", "INT32")}


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


def _decode_b64(text, where: str) -> bytes:
    if not isinstance(text, str):
        raise InputError(f"{where}: b64 must be a base64 string, got {type(text).__name__}")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(f"{where}: b64 is not valid base64 ({exc})") from None


def _decode(data: bytes, where: str, limits: ServeLimits) -> np.ndarray:
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
            rgb = _decode(_decode_b64(source, where), where, limits)
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
    return V1Batch(np.stack(arrays), target, pictures, output)


def _explained(result, j: int, batch: V1Batch | None, *, maps: bool, colormap: str, alpha: float) -> list[dict]:
    meta = result.metadata
    rows = []
    for k, (c, s) in enumerate(zip(result.class_index[j], result.score[j], strict=True)):
        row = {"index": int(c), "label": meta.label(int(c)), "score": float(s)}
        if maps:
            cam = result.cam[j, k]
            if batch.output == "array":
                row["cam"] = cam.tolist()
            else:
                picture = batch.pictures[j]
                image = heatmap(cam, colormap=colormap) if picture is None else overlay(
                    picture, cam, colormap=colormap, alpha=alpha, region=explained_region(picture.shape, meta)
                )  # fmt: skip
                row["png"] = base64.b64encode(encode_image(image, "png")).decode("ascii")
        rows.append(row)
    return rows


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
                "explained": _explained(result, j, batch, maps=explain, colormap=colormap, alpha=alpha),
            }
        )
    return {"explanations" if explain else "predictions": records}


def _dims(meta: ArtifactMetadata) -> dict[str, list[int]]:
    """Tensor shapes of the contract with -1 for the batch and for dynamic height/width."""
    h, w = meta.input_size if meta.input_size is not None else (-1, -1)
    k = 1 if meta.class_input else meta.top_k
    cam_hw = [h, w] if meta.upsample else [-1, -1]
    return {
        "image": [-1, meta.in_channels, h, w],
        "target_class": [-1],
        "logits": [-1, meta.num_classes],
        "probabilities": [-1, meta.num_classes],
        "class_index": [-1, k],
        "score": [-1, k],
        "cam": [-1, k, *cam_hw],
    }


_DATATYPES = {"image": "FP32", "target_class": "INT64", "class_index": "INT64"}


def v2_metadata(name: str, meta: ArtifactMetadata) -> dict:
    """``GET /v2/models/NAME``: inputs and outputs from the contract; the artifact's metadata as parameters."""
    dims = _dims(meta)
    inputs = INPUT_NAMES[: 2 if meta.class_input else 1]
    return {
        "inputs": [{"name": n, "datatype": _DATATYPES.get(n, "FP32"), "shape": dims[n]} for n in inputs],
        "outputs": [{"name": n, "datatype": _DATATYPES.get(n, "FP32"), "shape": dims[n]} for n in OUTPUT_NAMES],
    }


def v2_inputs(tensors: dict[str, tuple[str, np.ndarray]], meta: ArtifactMetadata):
    """Check v2 input tensors (name -> (datatype, array)); return ``(image, target_class or None)``."""
    allowed = INPUT_NAMES[: 2 if meta.class_input else 1]
    unknown = sorted(set(tensors) - set(allowed))
    if unknown:
        raise InputError(f"unknown input(s) {unknown}; this model takes {list(allowed)}")
    if "image" not in tensors:
        raise InputError('the input "image" (FP32 [N, C, H, W], normalized) is missing')
    for name, (datatype, _) in tensors.items():
        if datatype not in _V2_TYPES[name]:
            raise InputError(f'input "{name}" must be {" or ".join(_V2_TYPES[name])}, got {datatype}')
    image = tensors["image"][1]
    dims = _dims(meta)["image"]
    if image.ndim != 4 or any(d not in (-1, s) for d, s in zip(dims[1:], image.shape[1:], strict=True)):
        raise InputError(f'input "image" must have shape {dims} (-1: any), got {list(image.shape)}')
    if image.shape[0] > 0 and not np.isfinite(image).all():
        raise InputError('input "image" holds NaN or Inf')
    target = tensors.get("target_class", (None, None))[1]
    if target is not None and target.shape != (image.shape[0],):
        raise InputError(f'input "target_class" must have shape [{image.shape[0]}] (one per image), got {target.shape}')
    if target is not None:  # checked here so the message names the input the client sent
        bad = np.flatnonzero((target < -1) | (target >= meta.num_classes))
        if bad.size:
            i = int(bad[0])
            raise InputError(
                f'input "target_class"[{i}] = {int(target[i])} is out of range; expected 0..{meta.num_classes - 1}, '
                "or -1 for the top prediction"
            )
    return image.astype(np.float32, copy=False), None if target is None else target.astype(np.int64)


def v2_tensors(result, requested: list[str] | None) -> list[tuple[str, str, np.ndarray]]:
    """The contract outputs (or the requested ones, in the contract's order) as (name, datatype, array)."""
    if requested:
        unknown = sorted(set(requested) - set(OUTPUT_NAMES))
        if unknown:
            raise InputError(f"unknown output(s) {unknown}; this model returns {list(OUTPUT_NAMES)}")
    names = [n for n in OUTPUT_NAMES if not requested or n in requested]
    arrays = dict(zip(OUTPUT_NAMES, result.outputs(), strict=True))
    return [(n, _DATATYPES.get(n, "FP32"), arrays[n]) for n in names]
