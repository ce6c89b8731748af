"""The runtimes an artifact can be checked under, each in float32: ``validate(..., runtime=R)``.

``R`` is ``NAME`` or ``NAME:DEVICE``: ``onnxruntime`` (``cpu``, ``cuda``, ``tensorrt``),
``openvino`` (``CPU``, ``GPU``), ``onnx-reference`` (``onnx.reference.ReferenceEvaluator``,
the ONNX specification in numpy) for ``.onnx`` files, and ``libtorch`` (``cpu``, ``cuda``)
for ``.pt`` files. Every runtime is asked for float32 arithmetic: OpenVINO's CPU plugin
otherwise runs bf16 where the core supports it (maps 0.65 off, classes flipped), ONNX
Runtime's CUDA provider TF32 (``use_tf32=0``), TensorRT float16 if enabled. A device that is
not there is an error, never a silent fall back to another device: a check must run where
it says it ran. No torch at import time.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..contract import INPUT_NAMES, METADATA_KEY, ArtifactMetadata, output_names
from ..errors import ArtifactError, ArtifactLoadError, GradCAMError
from ..runtime.explainer import (
    CUDA_PROVIDER_OPTIONS,
    Explainer,
    OnnxExplainer,
    TorchScriptExplainer,
    _check_file,
    cuda_device_count,
    cuda_provider,
)

__all__ = [
    "RUNTIMES",
    "RuntimeChoice",
    "RuntimeChoiceError",
    "RuntimeInfo",
    "RuntimeUnavailableError",
    "OpenVinoExplainer",
    "ReferenceExplainer",
    "load_under",
    "parse_runtime",
    "runtime_info",
]

log = logging.getLogger(__name__)

# name -> its devices (the first is the default) and the artifact suffixes it runs
RUNTIMES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "onnxruntime": (("cpu", "cuda", "tensorrt"), (".onnx",)),
    "openvino": (("CPU", "GPU"), (".onnx",)),
    "onnx-reference": (("cpu",), (".onnx",)),
    "libtorch": (("cpu", "cuda"), (".pt", ".ts", ".pth")),
}
_INSTALL = {
    "onnxruntime": "pip install gradcam_model (onnxruntime, or onnxruntime-gpu for cuda/tensorrt)",
    "openvino": 'pip install "gradcam_model[openvino]"',
    "onnx-reference": 'pip install "gradcam_model[export]" (the onnx package)',
    "libtorch": 'pip install "gradcam_model[export]" (torch)',
}
OPENVINO_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}
TENSORRT_OPTIONS = {"trt_fp16_enable": "False", "trt_int8_enable": "False"}


class RuntimeChoiceError(GradCAMError, ValueError):
    """An unknown runtime or device name, or a runtime that does not run this kind of artifact."""


class RuntimeUnavailableError(GradCAMError):
    """A runtime that is not installed, or a device that this machine or runtime build lacks."""


@dataclass(frozen=True)
class RuntimeChoice:
    name: str
    device: str

    def __str__(self) -> str:
        return f"{self.name}:{self.device}"


@dataclass(frozen=True)
class RuntimeInfo:
    """What ran an artifact: the runtime, its version and the settings that make it float32."""

    name: str
    version: str
    device: str
    settings: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        settings = ", ".join(f"{k}={v}" for k, v in self.settings.items())
        return f"{self.name} {self.version} on {self.device}" + (f" ({settings})" if settings else "")

    def to_dict(self) -> dict:
        return {"name": self.name, "version": self.version, "device": self.device, "settings": dict(self.settings)}


def _valid() -> str:
    return ", ".join(f"{n}[:{'|'.join(d)}]" for n, (d, _) in RUNTIMES.items())


def parse_runtime(spec: str, path: str | os.PathLike | None = None) -> RuntimeChoice:
    """``NAME[:DEVICE]`` as a :class:`RuntimeChoice`; checks the artifact's suffix when ``path`` is given."""
    name, _, device = str(spec).partition(":")
    name = name.strip().lower()
    if name not in RUNTIMES:
        raise RuntimeChoiceError(f"unknown runtime {spec!r}; valid: {_valid()}")
    devices, suffixes = RUNTIMES[name]
    if not device:
        device = devices[0]
    match = {d.lower(): d for d in devices}.get(device.strip().lower())
    if match is None:
        raise RuntimeChoiceError(f"unknown device {device!r} for {name}; valid: {', '.join(devices)}")
    if path is not None and Path(path).suffix.lower() not in suffixes:
        others = [n for n, (_, s) in RUNTIMES.items() if Path(path).suffix.lower() in s]
        raise RuntimeChoiceError(
            f"{name} runs {'/'.join(suffixes)} artifacts, not {Path(path).name}"
            + (f"; for this file use {' or '.join(others)}" if others else "")
        )
    return RuntimeChoice(name, match)


def load_under(path: str | os.PathLike, runtime: str | RuntimeChoice) -> Explainer:
    """Load the artifact at ``path`` under ``runtime`` in float32; ``explainer.runtime_info`` says how."""
    choice = runtime if isinstance(runtime, RuntimeChoice) else parse_runtime(runtime, path)
    if choice.name == "onnxruntime":
        return _onnxruntime(Path(path), choice.device)
    if choice.name == "openvino":
        return OpenVinoExplainer(path, device=choice.device)
    if choice.name == "onnx-reference":
        return ReferenceExplainer(path)
    return _libtorch(Path(path), choice.device)


def runtime_info(explainer: Explainer) -> RuntimeInfo:
    """How ``explainer`` runs: set by :func:`load_under`, else read from the session or module."""
    info = getattr(explainer, "runtime_info", None)
    if info is not None:
        return info
    if isinstance(explainer, OnnxExplainer):
        import onnxruntime as ort

        return RuntimeInfo("onnxruntime", ort.__version__, explainer.provider)
    if isinstance(explainer, TorchScriptExplainer):
        import torch

        return RuntimeInfo("libtorch", torch.__version__, str(explainer.device))
    return RuntimeInfo(type(explainer).__name__, "unknown", "unknown")


def _require(module: str, runtime: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise RuntimeUnavailableError(f"{runtime} is not installed: {_INSTALL[runtime]}") from None


def _onnxruntime(path: Path, device: str) -> Explainer:
    ort = _require("onnxruntime", "onnxruntime")
    available = ort.get_available_providers()
    if device == "cpu":
        providers, settings = ["CPUExecutionProvider"], {}
    else:
        wanted = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}[device]
        if wanted not in available:
            raise RuntimeUnavailableError(
                f"onnxruntime {ort.__version__} has no {wanted} (it has {', '.join(available)}): "
                f"install onnxruntime-gpu with CUDA{' and TensorRT' if device == 'tensorrt' else ''}"
            )
        if cuda_device_count() == 0:
            raise RuntimeUnavailableError(f"onnxruntime:{device} needs a CUDA GPU and driver; this machine has none")
        providers = [cuda_provider()]
        settings = dict(CUDA_PROVIDER_OPTIONS)
        if device == "tensorrt":
            providers.insert(0, (wanted, dict(TENSORRT_OPTIONS)))
            settings.update(TENSORRT_OPTIONS)
    explainer = OnnxExplainer(path, providers=providers)
    chosen = providers[0] if isinstance(providers[0], str) else providers[0][0]
    if explainer.provider != chosen:  # ORT falls back to the next provider with only a log line
        raise RuntimeUnavailableError(
            f"onnxruntime:{device} did not start ({chosen} fell back to {explainer.provider})"
        )
    explainer.runtime_info = RuntimeInfo("onnxruntime", ort.__version__, explainer.provider, settings)
    return explainer


def _libtorch(path: Path, device: str) -> Explainer:
    torch = _require("torch", "libtorch")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeUnavailableError("libtorch:cuda needs a CUDA GPU and a CUDA build of torch; this machine has none")
    explainer = TorchScriptExplainer(path, device=device)
    settings = {"cudnn.allow_tf32": "False"} if device == "cuda" else {}
    explainer.runtime_info = RuntimeInfo("libtorch", torch.__version__, device, settings)
    return explainer


def _onnx_metadata(path: Path) -> tuple[object, ArtifactMetadata]:
    """The ONNX model and its gradcam_model metadata, checked like :class:`OnnxExplainer` does."""
    onnx = _require("onnx", "onnx-reference")
    _check_file(path)  # missing, unreadable, a PyTorch checkpoint: user errors, as for ONNX Runtime
    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ArtifactLoadError(f"{path} is not a loadable ONNX model: {str(exc).splitlines()[0]}") from exc
    props = {p.key: p.value for p in proto.metadata_props}
    if METADATA_KEY not in props:
        raise ArtifactError(f"{path} is an ONNX model without gradcam_model metadata; export it with gradcam_model")
    return proto, ArtifactMetadata.from_json(props[METADATA_KEY], str(path))


def _feeds(image: np.ndarray, target_class: np.ndarray | None) -> dict[str, np.ndarray]:
    feeds = {INPUT_NAMES[0]: image}
    if target_class is not None:
        feeds[INPUT_NAMES[1]] = target_class
    return feeds


def _refuse_unit_maxpool_indices(proto, path: Path) -> None:
    """onnx.reference (1.23) returns a 1x1 ``MaxPool``'s ``Indices`` per (n, c) plane, where the
    specification and ONNX Runtime flatten them over the whole tensor; torch.onnx's max-pool
    backward reads them through such a pool (its offsets), and the evaluator's ``ScatterElements``
    then indexes out of range. Refuse up front rather than fail mid-run."""
    for node in proto.graph.node:
        kernel = next((list(a.ints) for a in node.attribute if a.name == "kernel_shape"), None)
        if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1] and kernel == [1, 1]:
            raise RuntimeUnavailableError(
                f"onnx-reference cannot run {path.name}: its max-pool gradient reads a 1x1 MaxPool's indices, "
                "which onnx.reference computes per plane, not over the tensor as the ONNX spec says; "
                "use onnxruntime or openvino"
            )


class ReferenceExplainer(Explainer):
    """An ONNX artifact under ``onnx.reference.ReferenceEvaluator``: the specification, in numpy (slow)."""

    def __init__(self, path: str | os.PathLike) -> None:
        path = Path(path)
        proto, metadata = _onnx_metadata(path)
        from onnx.reference import ReferenceEvaluator

        _refuse_unit_maxpool_indices(proto, path)
        try:
            self.evaluator = ReferenceEvaluator(proto)
        except Exception as exc:  # an operator or opset the evaluator lacks
            raise ArtifactLoadError(f"onnx-reference cannot load {path}: {str(exc).splitlines()[0]}") from exc
        super().__init__(path, metadata)
        import onnx

        self.runtime_info = RuntimeInfo("onnx-reference", onnx.__version__, "cpu (numpy)")

    def _run(self, image, target_class):
        # the hardswish backward's step scales x^2 by 2^100: above |x| = 2^14 that is inf by IEEE
        # rules, and clamps to the right 0; numpy warns about the overflow
        with np.errstate(over="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            outputs = self.evaluator.run(None, _feeds(image, target_class))
        return tuple(np.asarray(o) for o in outputs)


class OpenVinoExplainer(Explainer):
    """An ONNX artifact under OpenVINO on ``device`` (``CPU`` or ``GPU``), precision hint f32."""

    def __init__(self, path: str | os.PathLike, *, device: str = "CPU") -> None:
        path = Path(path)
        ov = _require("openvino", "openvino")
        _, metadata = _onnx_metadata(path)
        core = ov.Core()
        if device not in core.available_devices:
            raise RuntimeUnavailableError(
                f"openvino has no {device} device here (it has {', '.join(core.available_devices) or 'none'})"
            )
        try:
            model = core.read_model(str(path))
            self.compiled = core.compile_model(model, device, dict(OPENVINO_CONFIG))
        except Exception as exc:  # OpenVINO raises RuntimeError/its own types with long messages
            raise ArtifactLoadError(f"openvino cannot load {path}: {str(exc).strip().splitlines()[0]}") from exc
        precision = self.compiled.get_property("INFERENCE_PRECISION_HINT")  # an ov.Type: <Type: 'float32'>
        if precision != ov.Type.f32:
            raise RuntimeUnavailableError(f"openvino:{device} runs in {precision}, not float32; maps would be wrong")
        names = [o.get_any_name() for o in self.compiled.outputs]
        if names != list(output_names(metadata.method)):
            raise ArtifactError(
                f"{path} has outputs {names} under openvino; expected {list(output_names(metadata.method))}"
            )
        super().__init__(path, metadata)
        self.runtime_info = RuntimeInfo("openvino", ov.__version__, device, dict(OPENVINO_CONFIG))

    def _run(self, image, target_class):
        request = self.compiled.create_infer_request()  # one per call: safe from several threads
        results = request.infer(_feeds(image, target_class))
        return tuple(np.asarray(results[o]) for o in self.compiled.outputs)
