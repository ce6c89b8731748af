"""gradcam_model: deployable Grad-CAM artifacts with the gradient inside the graph."""

from importlib.metadata import PackageNotFoundError, version

from .errors import (
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
from .layers import LayerInfo, list_layers
from .methods import METHODS, CAMMethod
from .wrapper import OUTPUT_NAMES, GradCAMModel, reference_cam

try:
    __version__ = version("gradcam_model")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "ArtifactError",
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
    "list_layers",
    "reference_cam",
]
