"""Benchmarks: the explanation at the cost of plain inference, side by side with other libraries.

For each configuration (architecture, target layer, input size, batch) one process
builds the model once and times every contestant on the same input, interleaved
round by round (the order rotates each round), after a warm-up, with the same
number of threads everywhere (``torch.set_num_threads`` and ONNX Runtime's
``intra_op_num_threads``):

- ``torch_logits``: the model itself in eager torch, logits only;
- ``reference_cam``: :func:`gradcam_model.reference_cam` (hooks + live autograd);
- ``gradcam_eager``: :class:`gradcam_model.GradCAMModel` in eager torch under
  ``inference_mode``;
- ``ort_logits``: the plain model exported with ``torch.onnx.export(dynamo=True)``
  (dynamic batch) under ONNX Runtime: the floor, what inference alone costs;
- ``ort_gradcam``: our ONNX Grad-CAM artifact under ONNX Runtime;
- ``torchscript``: our TorchScript Grad-CAM artifact under libtorch;
- ``pytorch_grad_cam``: pytorch-grad-cam's ``GradCAM`` (its own copy of the model,
  since its hooks stay registered);
- ``captum``: Captum's ``LayerGradCam`` (ReLU'd) + ``LayerAttribution.interpolate``.

Figures are medians of the interleaved runs; ratios compare medians of one run.
Each configuration also records how long the build (``GradCAMModel``), the ONNX
export and its validation took, against the plain logits-only export of the same
model (exported once: it is also the floor's artifact); the target is
(build + export) <= 3x that export.
Peak memory of the two ONNX Runtime sessions is measured in a fresh interpreter
each (:mod:`.memory`). :func:`run_benchmark` is the library entry; ``gradcam bench``
is the command line (:mod:`.cli`).

Modules: :mod:`.configs` (what to run), :mod:`.results` (what was measured),
:mod:`.contestants` (who runs), :mod:`.timing` (how they are timed), :mod:`.memory`
(the ONNX Runtime memory probe), :mod:`.machine` (device, cores, versions),
:mod:`.report` (Markdown), :mod:`.cli` (options); the side benchmarks :mod:`.pipeline`
(the explain pipeline), :mod:`.serve` (``gradcam serve`` under load) and
:mod:`.ray_engine` (the Ray engine), with what they share in :mod:`.sections`.
Importing this package does not import torch; the names below load their module on use.
"""

from __future__ import annotations

import importlib

__all__ = [
    "BenchConfig",
    "BenchResult",
    "CONFIGS",
    "CONTESTANTS",
    "ConfigResult",
    "QUICK_CONFIGS",
    "TargetCheck",
    "Timing",
    "UnknownConfigError",
    "machine_info",
    "ort_peak_memory",
    "resolve_device",
    "run_benchmark",
    "select_configs",
]

_HOME = {
    "BenchConfig": "configs",
    "CONFIGS": "configs",
    "QUICK_CONFIGS": "configs",
    "UnknownConfigError": "configs",
    "select_configs": "configs",
    "BenchResult": "results",
    "CONTESTANTS": "results",
    "ConfigResult": "results",
    "TargetCheck": "results",
    "Timing": "results",
    "machine_info": "machine",
    "resolve_device": "machine",
    "ort_peak_memory": "memory",
    "run_benchmark": "timing",
}


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
