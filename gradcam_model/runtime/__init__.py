"""The serve side: run artifacts and explain images with numpy, ONNX Runtime and OpenCV only (never torch).

``.onnx`` artifacts run under ONNX Runtime; ``.pt`` (TorchScript) artifacts need torch,
which is imported only when one is loaded. Parity checks against the eager model are
build side: :func:`gradcam_model.validate`.
"""

from .evaluate import METRICS, Evaluation, evaluate
from .explainer import Explainer, Explanation, OnnxExplainer, TorchScriptExplainer, default_providers, load_explainer
from .images import decode_image, explained_region, load_image, preprocess
from .inputs import ImageInput, collect_images, resolve_class
from .pipeline import CSV_FIELDS, ExplainSummary, Prediction, explain_files
from .ray_engine import explain_dataset
from .visualize import COLORMAPS, OVERLAY_FORMATS, caption, grid, heatmap, overlay, save_image, save_png

__all__ = [
    "COLORMAPS",
    "CSV_FIELDS",
    "Evaluation",
    "Explainer",
    "ExplainSummary",
    "Explanation",
    "ImageInput",
    "METRICS",
    "OVERLAY_FORMATS",
    "OnnxExplainer",
    "Prediction",
    "TorchScriptExplainer",
    "caption",
    "collect_images",
    "decode_image",
    "default_providers",
    "evaluate",
    "explained_region",
    "explain_dataset",
    "explain_files",
    "grid",
    "heatmap",
    "load_explainer",
    "load_image",
    "overlay",
    "preprocess",
    "resolve_class",
    "save_image",
    "save_png",
]
