"""Run artifacts (ONNX Runtime, libtorch), check their parity, prepare images."""

from .explainer import Explainer, Explanation, OnnxExplainer, TorchScriptExplainer, load_explainer
from .images import load_image, preprocess
from .validate import TOLERANCES, ParityReport, Tolerance, assert_parity, tolerance_for, validate

__all__ = [
    "Explainer",
    "Explanation",
    "OnnxExplainer",
    "ParityReport",
    "TOLERANCES",
    "Tolerance",
    "TorchScriptExplainer",
    "assert_parity",
    "load_explainer",
    "load_image",
    "preprocess",
    "tolerance_for",
    "validate",
]
