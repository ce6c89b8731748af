"""Run artifacts (ONNX Runtime, libtorch), check their parity, prepare images."""

from .explainer import Explainer, Explanation, OnnxExplainer, TorchScriptExplainer, load_explainer
from .images import load_image, preprocess
from .validate import TOLERANCES, ParityReport, Tolerance, assert_parity, tolerance_for, validate
from .visualize import COLORMAPS, caption, grid, heatmap, overlay, save_png

__all__ = [
    "COLORMAPS",
    "Explainer",
    "Explanation",
    "OnnxExplainer",
    "ParityReport",
    "TOLERANCES",
    "Tolerance",
    "TorchScriptExplainer",
    "assert_parity",
    "caption",
    "grid",
    "heatmap",
    "overlay",
    "save_png",
    "load_explainer",
    "load_image",
    "preprocess",
    "tolerance_for",
    "validate",
]
