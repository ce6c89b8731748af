"""A Triton Inference Server model repository for an ONNX artifact: config.pbtxt, labels, the model.

Two backends: ``onnxruntime`` (Triton's own ONNX Runtime backend runs the graph; this
module) and ``python`` (our serve-side runtime inside Triton's python backend, taking
encoded pictures too; :mod:`.triton_python`). The ``onnxruntime`` layout
(``tritonserver --model-repository REPO``)::

    REPO/NAME/config.pbtxt   platform onnxruntime_onnx, inputs/outputs, dynamic batching, metadata
    REPO/NAME/labels.txt     one class name per line (class indices when the artifact has no names)
    REPO/NAME/1/model.onnx   the artifact, byte for byte

The configuration is written as protobuf text by hand (no tritonclient at run time: its
protobuf messages clash with kserve's in one process). Dims leave out the batch axis;
dynamic height and width are ``-1``. ``target_class`` is ``[N]`` in the graph, so Triton
sees ``dims: [1]`` reshaped to ``[]``. Every file is written atomically; the
configuration last, so Triton never sees a model without its file.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from .._atomic import check_target, write_bytes_atomic
from ..contract import GUIDED_OUTPUT, INPUT_NAMES, OUTPUT_NAMES, ArtifactMetadata
from ..errors import ArtifactError, InputError

__all__ = [
    "BACKENDS",
    "PYTHON_ONLY_FILES",
    "LABELS_FILE",
    "TritonOptions",
    "common_lines",
    "config_text",
    "labels_text",
    "model_dims",
    "output_entries",
    "parameter",
    "quote",
    "tensor_entry",
    "write_config",
    "write_repository",
]

BACKENDS = ("onnxruntime", "python")
PYTHON_ONLY_FILES = ("README.md", "1/model.py")  # what the python backend writes beyond the ONNX layout

LABELS_FILE = "labels.txt"
_TYPES = {"tensor(float)": "TYPE_FP32", "tensor(int64)": "TYPE_INT64"}
_KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU", "auto": None}


@dataclass(frozen=True)
class TritonOptions:
    """Serving settings written into config.pbtxt."""

    max_batch_size: int = 8
    instance_kind: str = "cpu"  # cpu, gpu, or auto (Triton's choice)
    instances: int = 1
    max_queue_delay_us: int = 2000
    backend: str = "onnxruntime"  # or "python": our runtime inside Triton's python backend (.triton_python)
    # python backend only: the environment the model runs in (EXECUTION_ENV_PATH; None: the server's own)
    execution_env: str | None = None
    max_pixels: int = 64_000_000  # python backend: pictures with more pixels are refused before decoding
    max_side: int = 2048  # python backend: pictures are decoded reduced to this long side
    colormap: str = "jet"  # python backend: the overlays
    alpha: float = 0.4


def model_dims(path: str | os.PathLike) -> tuple[ArtifactMetadata, list[tuple[str, str, list[int]]]]:
    """The artifact's metadata and its (name, Triton type, dims without batch) per input, then per output."""
    from ..runtime.explainer import OnnxExplainer

    explainer = OnnxExplainer(path, providers=["CPUExecutionProvider"])
    session = explainer.session
    tensors = []
    for node in (*session.get_inputs(), *session.get_outputs()):
        if node.type not in _TYPES:
            raise ArtifactError(f"{path}: {node.name} is {node.type}; expected float32 or int64")
        dims = [d if isinstance(d, int) and d >= 0 else -1 for d in node.shape[1:]]
        tensors.append((node.name, _TYPES[node.type], dims))
    return explainer.metadata, tensors


def quote(text: str) -> str:
    """A protobuf text-format string literal (UTF-8 kept, quotes, backslashes and control bytes escaped)."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\{ord(ch):03o}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def tensor_entry(name: str, dtype: str, dims: list[int], extra: str = "") -> str:
    shape = ", ".join(str(d) for d in dims)
    return f"  {{\n    name: {quote(name)}\n    data_type: {dtype}\n    dims: [ {shape} ]\n{extra}  }}"


def common_lines(metadata: ArtifactMetadata, options: TritonOptions) -> list[str]:
    """Dynamic batching, instances and the artifact's metadata as parameters: the same for every backend."""
    preferred = sorted({max(1, options.max_batch_size // 2), options.max_batch_size})
    kind = _KINDS[options.instance_kind]
    group = f"count: {options.instances}" + (f" kind: {kind}" if kind else "")
    lines = [
        "dynamic_batching {\n"
        f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n"
        f"  max_queue_delay_microseconds: {options.max_queue_delay_us}\n}}",
        f"instance_group [ {{ {group} }} ]",
    ]
    for key, value in sorted(asdict(metadata).items()):
        text = value if isinstance(value, str) else json.dumps(value)
        lines.append(parameter("gradcam." + key, text))
    return lines


def parameter(key: str, value: str) -> str:
    """One ``parameters`` entry of config.pbtxt."""
    return f"parameters {{ key: {quote(key)} value: {{ string_value: {quote(value)} }} }}"


def output_entries(tensors) -> list[str]:
    """The contract outputs of ``(name, type, dims)`` tensors, logits and probabilities labelled."""
    outputs = []
    for tensor, dtype, dims in tensors:
        if tensor in (*OUTPUT_NAMES, GUIDED_OUTPUT):  # a guided method's artifact has a sixth output
            extra = f"    label_filename: {quote(LABELS_FILE)}\n" if tensor in ("logits", "probabilities") else ""
            outputs.append(tensor_entry(tensor, dtype, dims, extra))
    return outputs


def config_text(name: str, metadata: ArtifactMetadata, tensors, options: TritonOptions = TritonOptions()) -> str:
    """config.pbtxt for a model whose tensors are ``(name, type, dims)`` as :func:`model_dims` returns them."""
    inputs = []
    for tensor, dtype, dims in tensors:
        if tensor in INPUT_NAMES:
            extra = ""
            if not dims:  # [N] in the graph: Triton wants a non-empty shape per sample
                dims, extra = [1], "    reshape: { shape: [ ] }\n"
            inputs.append(tensor_entry(tensor, dtype, dims, extra))
    lines = [
        f"name: {quote(name)}",
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {options.max_batch_size}",
        "input [\n" + ",\n".join(inputs) + "\n]",
        "output [\n" + ",\n".join(output_entries(tensors)) + "\n]",
        *common_lines(metadata, options),
    ]
    return "\n".join(lines) + "\n"


def labels_text(metadata: ArtifactMetadata) -> str:
    names = metadata.class_names or [str(i) for i in range(metadata.num_classes)]
    return "".join(" ".join(str(n).split()) + "\n" for n in names)


def write_config(model_onnx: str | os.PathLike, options: TritonOptions = TritonOptions()) -> Path:
    """Write config.pbtxt and labels.txt for ``REPO/NAME/1/model.onnx`` (already in place); return the config."""
    model_onnx = Path(model_onnx)
    folder = model_onnx.parent.parent
    metadata, tensors = model_dims(model_onnx)
    write_bytes_atomic(folder / LABELS_FILE, labels_text(metadata).encode("utf-8"), overwrite=True)
    config = folder / "config.pbtxt"
    write_bytes_atomic(config, config_text(folder.name, metadata, tensors, options).encode("utf-8"), overwrite=True)
    return config


def write_repository(
    artifact: str | os.PathLike,
    repo: str | os.PathLike,
    name: str,
    *,
    options: TritonOptions = TritonOptions(),
    overwrite: bool = False,
) -> Path:
    """Write ``repo/name`` for ``options.backend`` around an ``.onnx`` artifact; return its config.pbtxt.

    ``onnxruntime``: the artifact as ``1/model.onnx`` for Triton's ONNX Runtime backend.
    ``python``: the artifact run by our runtime in Triton's python backend
    (:mod:`~gradcam_model.serving.triton_python`).
    """
    if options.backend not in BACKENDS:
        raise InputError(f"unknown Triton backend {options.backend!r}; expected one of {', '.join(BACKENDS)}")
    artifact = Path(artifact)
    if artifact.suffix.lower() != ".onnx":
        raise ArtifactError(f"{artifact}: Triton's {options.backend} backend takes .onnx artifacts")
    folder = Path(repo) / name
    check_target(folder / "config.pbtxt", overwrite=overwrite)
    metadata, tensors = model_dims(artifact)  # a gradcam ONNX artifact: fail before writing anything
    try:
        data = artifact.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"cannot read {artifact}: {exc.strerror or exc}") from exc
    target = folder / "1" / "model.onnx"
    write_bytes_atomic(target, data, overwrite=True)
    if options.backend == "python":
        from .triton_python import write_python_files

        return write_python_files(folder, metadata, tensors, options)
    for stale in PYTHON_ONLY_FILES:  # left by an overwritten python-backend model
        (folder / stale).unlink(missing_ok=True)
    return write_config(target, options)
