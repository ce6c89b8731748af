"""The open inference protocol (v2) of the explanation server, free of any web framework.

Inputs: ``image`` (FP32/FP64 ``[N, C, H, W]``, normalized) or ``image_bytes`` (BYTES
``[N]``, encoded pictures, preprocessed as the artifact records, like v1), and
``target_class`` (INT64/INT32 ``[N]``) for class-input artifacts. Outputs: the five of
the contract and ``region`` (FP32 ``[N, 4]``: the ``x, y, w, h`` of each picture that
was explained) unless others are asked for; on request also the compact forms of the
map: ``cam_uint8`` (UINT8, ``rint(255 * cam)``), ``cam_png`` (BYTES, an 8-bit grey PNG
per map) and ``overlay_jpeg`` / ``overlay_png`` (BYTES, the map over the picture).
BYTES outputs need the binary data extension over HTTP (gRPC always sends raw bytes).
The artifact is the model's only version, ``"1"``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

from ..contract import GUIDED_OUTPUT, INPUT_NAMES, OUTPUT_NAMES, ArtifactMetadata, output_names
from ..errors import InputError
from ..runtime.images import explained_region, preprocess
from .protocol import ServeLimits, decode_picture, input_region, map_levels, map_png, overlay_bytes

__all__ = [
    "BYTES_OUTPUTS",
    "COMPACT_OUTPUTS",
    "DEFAULT_OUTPUTS",
    "PICTURE_INPUT",
    "VERSION",
    "V2Batch",
    "requested_outputs",
    "v2_config",
    "v2_inputs",
    "v2_metadata",
    "v2_outputs",
]

VERSION = "1"  # an artifact is one model version
PICTURE_INPUT = "image_bytes"
DEFAULT_OUTPUTS = (*OUTPUT_NAMES, "region")
COMPACT_OUTPUTS = ("cam_uint8", "cam_png", "overlay_jpeg", "overlay_png")
BYTES_OUTPUTS = ("cam_png", "overlay_jpeg", "overlay_png")
_INPUT_TYPES = {"image": ("FP32", "FP64"), PICTURE_INPUT: ("BYTES",), "target_class": ("INT64", "INT32")}
_DATATYPES = {"image": "FP32", PICTURE_INPUT: "BYTES", "target_class": "INT64", "class_index": "INT64",
              "cam_uint8": "UINT8", **dict.fromkeys(BYTES_OUTPUTS, "BYTES")}  # fmt: skip
_TRITON_TYPES = {"FP32": "TYPE_FP32", "INT64": "TYPE_INT64", "UINT8": "TYPE_UINT8", "BYTES": "TYPE_STRING"}


@dataclass
class V2Batch:
    """A v2 request ready to run."""

    images: np.ndarray  # [N, C, H, W] float32
    classes: np.ndarray | None
    pictures: list  # RGB uint8 per image for image_bytes, else None per image
    regions: np.ndarray  # [N, 4] float32


def _dims(meta: ArtifactMetadata) -> dict[str, list[int]]:
    """Tensor shapes with -1 for the batch and for dynamic height/width."""
    h, w = meta.input_size if meta.input_size is not None else (-1, -1)
    k = 1 if meta.class_input else meta.top_k
    cam_hw = [h, w] if meta.upsample else [-1, -1]
    return {
        "image": [-1, meta.in_channels, h, w],
        PICTURE_INPUT: [-1],
        "target_class": [-1],
        "logits": [-1, meta.num_classes],
        "probabilities": [-1, meta.num_classes],
        "class_index": [-1, k],
        "score": [-1, k],
        "cam": [-1, k, *cam_hw],
        "region": [-1, 4],
        "cam_uint8": [-1, k, *cam_hw],
        GUIDED_OUTPUT: [-1, k, meta.in_channels, *cam_hw],
        **{name: [-1, k] for name in BYTES_OUTPUTS},
    }


def _input_names(meta: ArtifactMetadata) -> list[str]:
    return ["image", PICTURE_INPUT] + (["target_class"] if meta.class_input else [])


def _output_names(meta: ArtifactMetadata | None = None) -> list[str]:
    """Every output the server can send; an artifact of a guided method adds ``guided`` (contract.output_names)."""
    guided = meta is not None and GUIDED_OUTPUT in output_names(meta.method)
    return [*DEFAULT_OUTPUTS, *COMPACT_OUTPUTS, *([GUIDED_OUTPUT] if guided else [])]


def v2_metadata(name: str, meta: ArtifactMetadata) -> dict:
    """``GET /v2/models/NAME``: every input and output the server takes or returns, ``-1`` for dynamic axes."""
    dims = _dims(meta)

    def tensor(n: str) -> dict:
        return {"name": n, "datatype": _DATATYPES.get(n, "FP32"), "shape": dims[n]}

    return {"inputs": [tensor(n) for n in _input_names(meta)], "outputs": [tensor(n) for n in _output_names(meta)]}


def v2_config(name: str, meta: ArtifactMetadata, max_batch: int) -> dict:
    """``GET /v2/models/NAME/config`` as Triton answers it (its ModelConfig as JSON; dims without the batch)."""
    dims = _dims(meta)

    def tensor(n: str) -> dict:
        record = {"name": n, "data_type": _TRITON_TYPES[_DATATYPES.get(n, "FP32")], "dims": dims[n][1:] or [1]}
        if not dims[n][1:]:
            record["reshape"] = {"shape": []}  # [N] tensors: Triton wants a shape per sample
        if n in INPUT_NAMES or n == PICTURE_INPUT:
            record["optional"] = True  # one of image and image_bytes; target_class defaults to -1
        return record

    parameters = {
        f"gradcam.{key}": {"string_value": value if isinstance(value, str) else json.dumps(value)}
        for key, value in sorted(asdict(meta).items())
    }
    return {
        "name": name,
        "platform": "",
        "backend": "gradcam",
        "version_policy": {"specific": {"versions": [int(VERSION)]}},
        "max_batch_size": max_batch,
        "input": [tensor(n) for n in _input_names(meta)],
        "output": [tensor(n) for n in _output_names(meta)],
        "parameters": parameters,
    }


def _pictures(data: np.ndarray, meta: ArtifactMetadata, limits: ServeLimits):
    pictures, arrays = [], []
    for i, item in enumerate(data.reshape(-1)):
        where = f'input "{PICTURE_INPUT}"[{i}]'
        if not isinstance(item, (bytes, bytearray)):
            raise InputError(f"{where}: expected the bytes of an encoded picture, got {type(item).__name__}")
        picture = decode_picture(bytes(item), where, limits)
        pictures.append(picture)
        arrays.append(preprocess(picture, meta))
    return np.stack(arrays), pictures


def v2_inputs(tensors: dict[str, tuple[str, np.ndarray]], meta: ArtifactMetadata, limits: ServeLimits) -> V2Batch:
    """Check v2 input tensors (name -> (datatype, array)) and decode pictures into one batch."""
    allowed = _input_names(meta)
    unknown = sorted(set(tensors) - set(allowed))
    if unknown:
        raise InputError(f"unknown input(s) {unknown}; this model takes {allowed}")
    given = [n for n in ("image", PICTURE_INPUT) if n in tensors]
    if len(given) != 1:
        raise InputError(
            f'give exactly one of the inputs "image" (FP32 [N, C, H, W], normalized) or "{PICTURE_INPUT}" '
            f"(BYTES [N], encoded pictures), got {given or 'neither'}"
        )
    for name, (datatype, _) in tensors.items():
        if datatype not in _INPUT_TYPES[name]:
            raise InputError(f'input "{name}" must be {" or ".join(_INPUT_TYPES[name])}, got {datatype}')
    data = tensors[given[0]][1]
    count = data.shape[0] if data.ndim else 1
    if count > limits.max_instances:
        raise InputError(f"{count} images in one request; at most {limits.max_instances}")
    if given == ["image"]:
        image = _image(tensors["image"][1], meta)
        pictures, regions = [None] * image.shape[0], [input_region(image)] * image.shape[0]
    else:
        if data.ndim != 1 or data.size == 0:
            raise InputError(f'input "{PICTURE_INPUT}" must have shape [N] (one picture each), got {list(data.shape)}')
        image, pictures = _pictures(data, meta, limits)
        regions = [explained_region(p.shape, meta) for p in pictures]
    target = _target(tensors.get("target_class", (None, None))[1], image.shape[0], meta)
    return V2Batch(image, target, pictures, np.asarray(regions, np.float32).reshape(-1, 4))


def _image(image: np.ndarray, meta: ArtifactMetadata) -> np.ndarray:
    dims = _dims(meta)["image"]
    if image.ndim != 4 or any(d not in (-1, s) for d, s in zip(dims[1:], image.shape[1:], strict=True)):
        raise InputError(f'input "image" must have shape {dims} (-1: any), got {list(image.shape)}')
    if image.shape[0] > 0 and not np.isfinite(image).all():
        raise InputError('input "image" holds NaN or Inf')
    return image.astype(np.float32, copy=False)


def _target(target, batch: int, meta: ArtifactMetadata) -> np.ndarray | None:
    if target is None:
        return None
    if target.shape != (batch,):
        raise InputError(f'input "target_class" must have shape [{batch}] (one per image), got {list(target.shape)}')
    bad = np.flatnonzero((target < -1) | (target >= meta.num_classes))  # named here as the client sent it
    if bad.size:
        i = int(bad[0])
        raise InputError(
            f'input "target_class"[{i}] = {int(target[i])} is out of range; expected 0..{meta.num_classes - 1}, '
            "or -1 for the top prediction"
        )
    return target.astype(np.int64)


def requested_outputs(requested: list[str] | None, meta: ArtifactMetadata | None = None) -> list[str]:
    """The output names to send, in the server's order: the requested ones, else the defaults
    (a guided artifact's ``guided`` [N, K, 3, H, W] only when asked for: it is 3x the maps)."""
    if not requested:
        return list(DEFAULT_OUTPUTS)
    known = _output_names(meta)
    unknown = sorted(set(requested) - set(known))
    if unknown:
        raise InputError(f"unknown output(s) {unknown}; this model returns {known}")
    return [n for n in known if n in requested]


def v2_outputs(result, batch: V2Batch, names: list[str], *, colormap: str = "jet", alpha: float = 0.4):
    """``(name, datatype, array)`` of each output in ``names`` (see :func:`requested_outputs`)."""
    arrays = dict(zip(output_names(result.metadata.method), result.outputs(), strict=True))
    cam = result.cam
    out = []
    for name in names:
        if name in arrays:
            array = arrays[name]
        elif name == "region":
            array = batch.regions
        elif name == "cam_uint8":
            array = map_levels(cam)
        else:
            array = np.empty(cam.shape[:2], dtype=object)
            for j, k in np.ndindex(*cam.shape[:2]):
                if name == "cam_png":
                    array[j, k] = map_png(cam[j, k])
                else:
                    fmt = name.rsplit("_", 1)[1]
                    region = tuple(batch.regions[j])
                    array[j, k] = overlay_bytes(batch.pictures[j], cam[j, k], region, fmt, colormap=colormap,
                                                alpha=alpha)  # fmt: skip
        out.append((name, _DATATYPES.get(name, "FP32"), array))
    return out
