"""gradcam_model: deployable Grad-CAM artifacts with the gradient inside the graph."""

from importlib.metadata import PackageNotFoundError, version

from .errors import (
    ArchitectureError,
    ArtifactError,
    ExportError,
    GradCAMError,
    InputError,
    LayerError,
    LayerNotFoundError,
    MethodError,
    ModelOutputError,
    ParityError,
    UnsupportedOperatorError,
    WeightsError,
)
from .export import ArtifactMetadata, export_onnx, export_torchscript
from .layers import LayerInfo, list_layers
from .methods import METHODS, CAMMethod
from .models import efficientnet_lite0_imagenet, imagenet_class_names, load_model, load_weights
from .runtime import (
    Explainer,
    Explanation,
    ParityReport,
    assert_parity,
    load_explainer,
    validate,
)
from .wrapper import INPUT_NAMES, OUTPUT_NAMES, GradCAMModel, reference_cam

try:
    __version__ = version("gradcam_model")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "ArchitectureError",
    "ArtifactError",
    "ArtifactMetadata",
    "Explainer",
    "Explanation",
    "INPUT_NAMES",
    "ParityReport",
    "assert_parity",
    "efficientnet_lite0_imagenet",
    "export_onnx",
    "export_torchscript",
    "load_explainer",
    "validate",
    "CAMMethod",
    "ExportError",
    "GradCAMError",
    "GradCAMModel",
    "InputError",
    "LayerError",
    "LayerInfo",
    "LayerNotFoundError",
    "METHODS",
    "MethodError",
    "ModelOutputError",
    "OUTPUT_NAMES",
    "ParityError",
    "UnsupportedOperatorError",
    "WeightsError",
    "imagenet_class_names",
    "list_layers",
    "load_model",
    "load_weights",
    "reference_cam",
]
