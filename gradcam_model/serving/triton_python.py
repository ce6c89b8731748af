"""A Triton python-backend repository: the artifact run by our serve-side runtime inside ``tritonserver``.

Layout (``gradcam triton ARTIFACT --out REPO --backend python``)::

    REPO/NAME/config.pbtxt   backend python, inputs/outputs, dynamic batching, metadata, limits
    REPO/NAME/labels.txt     one class name per line
    REPO/NAME/README.md      what the model needs installed and how the server finds it
    REPO/NAME/1/model.py     imports gradcam_model.serving.triton_model.TritonPythonModel
    REPO/NAME/1/model.onnx   the artifact, byte for byte

The environment the python-backend stub runs needs ``gradcam_model`` (serve side) with
``numpy < 2``: the stub of Triton 2.51 (nvidia-pytriton 0.7.0) is built against numpy 1
and, under numpy 2, reads the bytes of BYTES inputs as one repeated byte and crashes
(measured here). Every file is written atomically, the configuration last.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .. import __version__
from .._atomic import write_bytes_atomic
from ..contract import INPUT_NAMES, ArtifactMetadata
from .triton import (
    LABELS_FILE,
    TritonOptions,
    common_lines,
    labels_text,
    output_entries,
    parameter,
    quote,
    tensor_entry,
)

__all__ = ["ENVIRONMENT_REQUIREMENTS", "MODEL_PY", "config_text", "readme_text", "write_python_files"]

# what the stub's environment needs besides gradcam_model (pip requirement strings)
ENVIRONMENT_REQUIREMENTS = ("numpy>=1.24,<2", "opencv-python-headless>=4.8,<4.12")
MODEL_PY = (
    '"""Triton python-backend model written by gradcam triton: the code is the installed gradcam_model."""\n\n'
    "from gradcam_model.serving.triton_model import TritonPythonModel  # noqa: F401\n"
)


def config_text(name: str, metadata: ArtifactMetadata, tensors, options: TritonOptions) -> str:
    """config.pbtxt of the python-backend model for an artifact of ``(name, type, dims)`` tensors."""
    dims = {tensor: d for tensor, _, d in tensors}
    k = 1 if metadata.class_input else metadata.top_k
    inputs = [
        tensor_entry("image_bytes", "TYPE_STRING", [1], "    optional: true\n"),
        tensor_entry("image", "TYPE_FP32", dims["image"], "    optional: true\n"),
    ]
    if metadata.class_input:
        inputs.append(tensor_entry(INPUT_NAMES[1], "TYPE_INT64", [1], "    optional: true\n"))
    outputs = [
        *output_entries(tensors),
        tensor_entry("overlay_png", "TYPE_STRING", [k]),
        tensor_entry("region", "TYPE_FP32", [4]),
    ]
    lines = [
        f"name: {quote(name)}",
        'backend: "python"',
        f"max_batch_size: {options.max_batch_size}",
        "input [\n" + ",\n".join(inputs) + "\n]",
        "output [\n" + ",\n".join(outputs) + "\n]",
        *common_lines(metadata, options),
        parameter("max_pixels", str(options.max_pixels)),
        parameter("max_side", str(options.max_side)),
        parameter("colormap", options.colormap),
        parameter("alpha", repr(float(options.alpha))),
    ]
    if options.execution_env:
        lines.append(parameter("EXECUTION_ENV_PATH", options.execution_env))
    return "\n".join(lines) + "\n"


def readme_text(name: str, metadata: ArtifactMetadata, options: TritonOptions) -> str:
    """The repository's README.md: what runs, what must be installed, how Triton finds it, how to call it."""
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    requirements = " ".join(f'"{r}"' for r in (f"gradcam_model=={__version__}", *ENVIRONMENT_REQUIREMENTS))
    env = (
        f"This configuration sets `EXECUTION_ENV_PATH` to `{options.execution_env}`: the backend activates that "
        "environment (a folder with `bin/activate`, or a conda-pack `.tar.gz`) before it starts the model."
        if options.execution_env
        else "No `EXECUTION_ENV_PATH` is set: the model runs in the Python environment of the server's stub. Either "
        "start `tritonserver` with that environment's `bin/` first on `PATH`, or rewrite the repository with "
        "`gradcam triton ... --backend python --execution-env DIR` (Triton's `EXECUTION_ENV_PATH` parameter)."
    )
    klass = (
        "- `target_class` INT64 `[N, 1]` (optional): the class to explain per image, `-1` for the top one.\n"
        if metadata.class_input
        else ""
    )
    return f"""# Triton model `{name}`: Grad-CAM explanations with Triton's python backend

Written by `gradcam triton --backend python` (gradcam_model {__version__}). The artifact
`1/model.onnx` ({metadata.architecture}, {metadata.method} at `{metadata.target_layer}`) runs under
ONNX Runtime inside Triton's python backend; `1/model.py` imports the model from the installed
`gradcam_model`, so pictures are decoded and preprocessed exactly as `gradcam serve` and
`gradcam explain` do.

## What must be installed

The python backend runs `1/model.py` with the Python of its stub (`triton_python_backend_stub`,
built for one Python version; this repository was written with Python {py}). That Python
environment needs:

    pip install {requirements}

`numpy` must stay below 2: Triton's python-backend stub is built against numpy 1 (measured with
Triton 2.51: under numpy 2 it garbles BYTES inputs and the stub crashes). numpy 1 caps
`opencv-python-headless` at 4.11. Add `onnxruntime-gpu` for `KIND_GPU` instances. torch is never
needed.

{env}

## Calling it (KServe v2 / Triton protocol, HTTP or gRPC)

Inputs, one of the first two per request (`N` images, at most {options.max_batch_size}):
- `image_bytes` BYTES `[N, 1]`: encoded pictures (PNG, JPEG, ...), at most {options.max_pixels} pixels
  each, preprocessed as the artifact records;
- `image` FP32 `[N, 3, H, W]`: already normalized inputs;
{klass}
Outputs: `logits`, `probabilities`, `class_index`, `score`, `cam` (the artifact's contract), and
when asked for by name (or when a request names no outputs) `overlay` BYTES `[N, K]` (a PNG of
each map over its picture, or a heat map for `image` inputs) and `region` FP32 `[N, 4]` (the
`x, y, w, h` of the picture the map covers). Name the outputs you need to skip the overlays.
A bad request gets an error with one line saying what is wrong; the server keeps serving.
"""


def write_python_files(folder: Path, metadata: ArtifactMetadata, tensors, options: TritonOptions) -> Path:
    """Write labels, README, ``1/model.py`` and config.pbtxt (last) beside ``folder/1/model.onnx``."""
    write_bytes_atomic(folder / LABELS_FILE, labels_text(metadata).encode("utf-8"), overwrite=True)
    write_bytes_atomic(
        folder / "README.md", readme_text(folder.name, metadata, options).encode("utf-8"), overwrite=True
    )
    write_bytes_atomic(folder / "1" / "model.py", MODEL_PY.encode("utf-8"), overwrite=True)
    config = folder / "config.pbtxt"
    text = config_text(folder.name, metadata, tensors, options)
    write_bytes_atomic(config, text.encode("utf-8"), overwrite=True)
    return config
