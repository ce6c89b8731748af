"""gradcam_model: deployable Grad-CAM artifacts with the gradient inside the graph.

Two wings. The serve side (:mod:`gradcam_model.runtime`, :mod:`gradcam_model.contract`)
needs numpy, onnxruntime and OpenCV only and is what ``pip install gradcam_model``
gives. The build side (``GradCAMModel``, the exporters, ``validate``) needs torch
(``pip install "gradcam_model[export]"``); its names load on first use, so importing
this package or the runtime never imports torch.
"""

from __future__ import annotations

import importlib

from .contract import INPUT_NAMES, OUTPUT_NAMES, ArtifactMetadata
from .errors import (
    ArchitectureError,
    ArtifactError,
    BackendError,
    ExportError,
    GradCAMError,
    InputError,
    LayerError,
    LayerNotFoundError,
    MethodError,
    MissingExtraError,
    ModelOutputError,
    ModelTypeError,
    ParityError,
    UnsupportedOperatorError,
    WeightsError,
)

# name -> module that defines it, imported on first access (module __getattr__, PEP 562)
_SERVE_SIDE = {".runtime"}
_LAZY = {
    # serve side: numpy, onnxruntime, OpenCV
    "Explainer": ".runtime",
    "Explanation": ".runtime",
    "load_explainer": ".runtime",
    "explain_files": ".runtime",
    "load_image": ".runtime",
    "preprocess": ".runtime",
    # build side: torch
    "GradCAMModel": ".graph.wrapper",
    "reference_cam": ".graph.reference",
    "export_onnx": ".export",
    "export_torchscript": ".export",
    "LayerInfo": ".graph.layers",
    "list_layers": ".graph.layers",
    "METHODS": ".graph.methods",
    "CAMMethod": ".graph.methods",
    "efficientnet_lite0_imagenet": ".models",
    "imagenet_class_names": ".models",
    "load_model": ".models",
    "load_weights": ".models",
    "ParityReport": ".checks.report",
    "assert_parity": ".checks.report",
    "tolerance_for": ".checks.tolerances",
    "validate": ".checks.parity",
}
# build-side subpackages reached as attributes (gradcam_model.export.export_onnx...)
_BUILD_MODULES = ("export", "graph", "checks", "models")
_BUILD_NEEDS = ("torch", "torchvision", "onnx", "onnxscript")


def _import_build_side(module: str, name: str):
    """Import a build-side module, or raise one :class:`MissingExtraError` naming the extra."""
    try:
        return importlib.import_module(module, __name__)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] not in _BUILD_NEEDS:
            raise
        raise MissingExtraError(
            f"gradcam_model.{name} is build side and needs {exc.name.split('.')[0]}, which this install lacks "
            f'(the base install runs artifacts only): pip install "gradcam_model[export]"'
        ) from None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # ~0.1 s: only when asked

    try:
        return version("gradcam_model")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0"


def __getattr__(name: str):
    if name == "__version__":
        globals()[name] = value = _version()
        return value
    if name in _BUILD_MODULES:
        value = _import_build_side(f".{name}", name)
        globals()[name] = value
        return value
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if module in _SERVE_SIDE:
        value = getattr(importlib.import_module(module, __name__), name)
    else:
        value = getattr(_import_build_side(module, name), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ArchitectureError",
    "ArtifactError",
    "BackendError",
    "ArtifactMetadata",
    "CAMMethod",
    "Explainer",
    "Explanation",
    "ExportError",
    "GradCAMError",
    "GradCAMModel",
    "INPUT_NAMES",
    "InputError",
    "LayerError",
    "LayerInfo",
    "LayerNotFoundError",
    "METHODS",
    "MethodError",
    "MissingExtraError",
    "ModelOutputError",
    "ModelTypeError",
    "OUTPUT_NAMES",
    "ParityError",
    "ParityReport",
    "UnsupportedOperatorError",
    "WeightsError",
    "assert_parity",
    "efficientnet_lite0_imagenet",
    "explain_files",
    "export_onnx",
    "export_torchscript",
    "imagenet_class_names",
    "list_layers",
    "load_explainer",
    "load_image",
    "load_model",
    "load_weights",
    "preprocess",
    "reference_cam",
    "tolerance_for",
    "validate",
]
