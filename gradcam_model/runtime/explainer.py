"""Run an exported artifact: ONNX Runtime for ``.onnx``, libtorch for ``.pt``."""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys
import warnings
import zipfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..contract import INPUT_NAMES, METADATA_KEY, ArtifactMetadata, output_names
from ..errors import ArtifactError, ArtifactLoadError, InputError

__all__ = [
    "Explanation",
    "Explainer",
    "OnnxExplainer",
    "TorchScriptExplainer",
    "CUDA_PROVIDER_OPTIONS",
    "cuda_provider",
    "default_providers",
    "load_explainer",
]

log = logging.getLogger(__name__)

_FLOAT_TYPES = (np.float16, np.float32, np.float64)


@dataclass(frozen=True)
class Explanation:
    """What an explainer returns; arrays follow the artifact contract."""

    logits: np.ndarray  # [N, C] float32
    probabilities: np.ndarray  # [N, C] float32
    class_index: np.ndarray  # [N, K] int64
    score: np.ndarray  # [N, K] float32
    cam: np.ndarray  # [N, K, H, W] float32
    metadata: ArtifactMetadata
    guided: np.ndarray | None = None  # [N, K, 3, H, W] float32, guided methods only (contract.GUIDED_OUTPUT)

    @classmethod
    def of(cls, outputs, metadata: ArtifactMetadata) -> Explanation:
        """The explanation of an artifact's outputs in the contract's order (:meth:`outputs`)."""
        return cls(*outputs[:5], metadata=metadata, guided=outputs[5] if len(outputs) > 5 else None)

    def labels(self) -> list[list[str]]:
        """Class names of the explained classes, ``[N][K]``."""
        return [[self.metadata.label(int(c)) for c in row] for row in self.class_index]

    def outputs(self) -> tuple[np.ndarray, ...]:
        """The artifact's outputs in the contract's order (``contract.output_names``)."""
        base = (self.logits, self.probabilities, self.class_index, self.score, self.cam)
        return base if self.guided is None else (*base, self.guided)


class Explainer(ABC):
    """A loaded artifact. ``explainer(images, class_index=None) -> Explanation``.

    ``images`` is numpy or torch, ``[N, C, H, W]`` or one ``[C, H, W]`` image,
    float16/32/64 (cast to float32), already normalized with the metadata's mean/std
    (see :func:`gradcam_model.runtime.preprocess`). ``class_index`` (artifacts exported
    with a class input only) is one int for all images or ``[N]`` ints, ``-1`` meaning
    the top prediction. Safe to call from several threads at once.
    """

    def __init__(self, path: Path, metadata: ArtifactMetadata) -> None:
        self.path = path
        self.metadata = metadata

    def __repr__(self) -> str:
        m = self.metadata
        return f"{type(self).__name__}({str(self.path)!r}, {m.architecture}, {m.method} at {m.target_layer!r})"

    def __call__(self, images, class_index=None) -> Explanation:
        image = self.check_images(images)
        target = self.check_class_index(class_index, image.shape[0])
        outputs = self._run(image, target)
        return Explanation.of(outputs, self.metadata)

    @abstractmethod
    def _run(self, image: np.ndarray, target_class: np.ndarray | None) -> tuple[np.ndarray, ...]:
        """Run the graph on validated inputs; return its outputs (``contract.output_names``) as numpy arrays."""

    def check_images(self, images) -> np.ndarray:
        """Validate and convert images to a contiguous float32 ``[N, C, H, W]`` array."""
        meta = self.metadata
        array = _to_numpy(images, "images")
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4:
            raise InputError(
                f"images must be [N, {meta.in_channels}, H, W] or one [{meta.in_channels}, H, W] image, "
                f"got shape {array.shape}"
            )
        if array.dtype not in _FLOAT_TYPES:
            raise InputError(
                f"images must be float16/32/64 (pixels normalized with mean {list(meta.mean)} and std "
                f"{list(meta.std)}), got {array.dtype}; see gradcam_model.runtime.preprocess"
            )
        if array.shape[0] == 0:
            raise InputError("images is an empty batch")
        if array.shape[1] != meta.in_channels:
            raise InputError(f"images must have {meta.in_channels} channels (axis 1), got shape {array.shape}")
        if meta.input_size is not None and tuple(array.shape[2:]) != tuple(meta.input_size):
            h, w = meta.input_size
            raise InputError(
                f"this artifact takes {h}x{w} images (fixed spatial size), got {array.shape[2]}x{array.shape[3]}; "
                "resize first (gradcam_model.runtime.preprocess does)"
            )
        array = np.ascontiguousarray(array, dtype=np.float32)
        finite = np.isfinite(array).reshape(array.shape[0], -1).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite).tolist()
            raise InputError(f"images contain NaN or Inf in sample(s) {bad}; expected finite pixels")
        return array

    def check_class_index(self, class_index, batch: int) -> np.ndarray | None:
        """Validate ``class_index`` into an int64 ``[N]`` array (``-1`` = top class)."""
        meta = self.metadata
        if class_index is None:
            return np.full((batch,), -1, dtype=np.int64) if meta.class_input else None
        if not meta.class_input:
            raise InputError(
                f"this artifact explains its top-{meta.top_k} classes and takes no class; "
                "export it with class_input=True (CLI: --class-input) to choose classes"
            )
        array = _to_numpy(class_index, "class_index")
        if array.ndim == 0:
            array = np.full((batch,), array.item())
        if array.ndim != 1 or array.shape[0] != batch:
            raise InputError(f"class_index must be one int or [{batch}] ints (one per image), got shape {array.shape}")
        if array.dtype.kind not in "iu":
            if array.dtype.kind == "f" and np.all(np.isfinite(array)) and np.all(array == np.round(array)):
                array = array.astype(np.int64)
            else:
                raise InputError(f"class_index must hold integers, got {array.dtype}")
        array = array.astype(np.int64)
        bad = np.flatnonzero((array < -1) | (array >= meta.num_classes))
        if bad.size:
            i = int(bad[0])
            raise InputError(
                f"class_index[{i}] = {int(array[i])} is out of range; expected 0..{meta.num_classes - 1}, "
                "or -1 for the top prediction"
            )
        return array


def _to_numpy(value, what: str) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    torch = sys.modules.get("torch")  # a tensor implies torch is loaded; never import it here
    if torch is not None and isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, (int, float, list, tuple, np.generic)):
        return np.asarray(value)
    raise InputError(f"{what} must be a numpy array or torch tensor, got {type(value).__name__}")


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ArtifactError(f"artifact {path} does not exist")
    if not path.is_file():
        raise ArtifactError(f"artifact {path} is not a file")
    if not os.access(path, os.R_OK):
        raise ArtifactError(f"artifact {path} is not readable")
    if _is_pytorch_checkpoint(path):
        raise ArtifactError(
            f"{path} is a PyTorch checkpoint, not an exported artifact; export it with gradcam export "
            "(--arch NAME --weights FILE)"
        )


# torch.save's legacy (non-zip) format starts with this pickled magic number
_LEGACY_TORCH_MAGIC = bytes.fromhex("80028a0a6cfc9c46f9206aa85019")


def _is_pytorch_checkpoint(path: Path) -> bool:
    """A ``torch.save`` file (state dict, checkpoint) rather than TorchScript or ONNX."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_LEGACY_TORCH_MAGIC))
        if head == _LEGACY_TORCH_MAGIC:
            return True
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    # TorchScript archives hold code/ and constants.pkl next to data.pkl; torch.save archives only data.pkl
    return any(n.endswith("/data.pkl") for n in names) and not any(n.endswith("/constants.pkl") for n in names)


class OnnxExplainer(Explainer):
    """An ONNX artifact under ONNX Runtime."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        providers: list[str] | None = None,
        threads: int | None = None,
        spinning: bool = True,
    ) -> None:
        import onnxruntime as ort

        path = Path(path)
        _check_file(path)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: ORT warns about unused initializers
        if threads is not None:  # one session per Ray actor: its share of the node's cores
            options.intra_op_num_threads = int(threads)
        if not spinning:  # idle pool threads sleep instead of spinning: the server's request threads need the cores
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        chosen = list(providers) if providers is not None else default_providers()
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=chosen)
        except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf/... types
            raise ArtifactLoadError(f"{path} is not a loadable ONNX model: {str(exc).splitlines()[0]}") from exc
        props = session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in props:
            raise ArtifactError(f"{path} is an ONNX model without gradcam_model metadata; export it with gradcam_model")
        metadata = ArtifactMetadata.from_json(props[METADATA_KEY], str(path))
        inputs = [i.name for i in session.get_inputs()]
        outputs = [o.name for o in session.get_outputs()]
        expected_inputs = list(INPUT_NAMES[: 2 if metadata.class_input else 1])
        expected_outputs = list(output_names(metadata.method))
        if inputs != expected_inputs or outputs != expected_outputs:
            missing = [name for name in expected_outputs if name not in outputs]
            raise ArtifactError(
                f"{path} has inputs {inputs} and outputs {outputs}; expected {expected_inputs} and {expected_outputs}"
                + (f" (it lacks {', '.join(missing)})" if missing else "")
            )
        super().__init__(path, metadata)
        self.session = session
        self.providers = session.get_providers()
        log.info("%s runs on %s", path.name, self.provider)

    @property
    def provider(self) -> str:
        """The execution provider that runs the graph (the first one the session kept)."""
        return self.providers[0]

    def _run(self, image, target_class):
        feeds = {"image": image}
        if target_class is not None:
            feeds["target_class"] = target_class
        return tuple(self.session.run(None, feeds))


# ONNX Runtime's CUDA provider runs float32 MatMul/Gemm and cuDNN convolutions in TF32
# (10-bit mantissa) by default (`use_tf32` defaults to 1). The gradient inside our graph goes
# through ReLU masks and a min-max normalization: TF32 moved ORT CUDA's maps by up to 0.97 and
# flipped classes on an H100 (TorchScript's by up to 0.999 on an H200; docs/benchmarks-gpu.md),
# so our sessions ask for float32. (With `prefer_nhwc=1`
# cuDNN's graph API ignores this option: keep that off, or set NVIDIA_TF32_OVERRIDE=0.)
CUDA_PROVIDER_OPTIONS: dict[str, str] = {"use_tf32": "0"}


def cuda_provider(device_id: int = 0) -> tuple[str, dict[str, str]]:
    """ONNX Runtime's CUDA provider with our options (float32 math: no TF32) on GPU ``device_id``."""
    # Since ONNX Runtime 1.26 an explicit `device_id` makes session creation first look for a
    # registered *plugin* EP device, and warn "No registered plugin EP device found for
    # 'CUDAExecutionProvider' with device_id=0" before using the built-in provider (seen with
    # onnxruntime-gpu 1.31.1 on an H100; onnxruntime_pybind_state.cc, CreateExecutionProviderFactoryInstance).
    # GPU 0 is the provider's default, so name the device only when it is another one.
    return "CUDAExecutionProvider", {**({"device_id": str(device_id)} if device_id else {}), **CUDA_PROVIDER_OPTIONS}


def default_providers() -> list[str | tuple[str, dict[str, str]]]:
    """CUDA (float32 math, see :data:`CUDA_PROVIDER_OPTIONS`) when ORT has it and a GPU is usable, then CPU.

    onnxruntime-gpu lists the CUDA provider even on machines without a GPU or CUDA
    driver, and a session asked to use it there prints error lines before falling
    back; so ask the CUDA driver first (no torch needed).
    """
    import onnxruntime as ort

    available = ort.get_available_providers()
    providers: list[str | tuple[str, dict[str, str]]] = []
    if "CUDAExecutionProvider" in available and cuda_device_count() > 0:
        providers.append(cuda_provider())
    providers.append("CPUExecutionProvider")
    return providers


@functools.cache
def cuda_device_count() -> int:
    """GPUs the CUDA driver (``libcuda.so.1``) reports; 0 when there is no driver or no device."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    try:
        if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
    except AttributeError:  # pragma: no cover - not a CUDA driver
        return 0
    return int(count.value)


class TorchScriptExplainer(Explainer):
    """A TorchScript artifact under libtorch."""

    def __init__(self, path: str | os.PathLike, *, device: str | None = None) -> None:
        path = Path(path)
        _check_file(path)
        try:
            import torch
        except ImportError:
            raise ArtifactError(
                f'{path} is a TorchScript artifact, which needs torch: pip install "gradcam_model[export]", '
                "or use the .onnx artifact (ONNX Runtime only)"
            ) from None
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        extra = {METADATA_KEY: ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit's deprecation notice
                module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
        except Exception as exc:  # torch raises RuntimeError/ValueError/pickle errors for bad files
            raise ArtifactLoadError(f"{path} is not a loadable TorchScript file: {str(exc).splitlines()[0]}") from exc
        if not extra[METADATA_KEY]:
            raise ArtifactError(f"{path} is a TorchScript file without gradcam_model metadata (gradcam.json)")
        metadata = ArtifactMetadata.from_json(extra[METADATA_KEY], str(path))
        super().__init__(path, metadata)
        self.module = module.eval()
        self.device = torch.device(device)
        if self.device.type == "cuda":
            _float32_convolutions(torch)

    def _run(self, image, target_class):
        import torch

        with torch.inference_mode():
            args = [torch.from_numpy(image).to(self.device)]
            if target_class is not None:
                args.append(torch.from_numpy(target_class).to(self.device))
            outputs = self.module(*args)
        return tuple(o.cpu().numpy() for o in outputs)


def _float32_convolutions(torch) -> None:
    """Make cuDNN run float32 convolutions in float32, for the whole process.

    PyTorch lets cuDNN use TF32 (10-bit mantissa) for float32 convolutions by default on
    Ampere and later GPUs. Measured on an H200 (resnet50 at 224, batch 64): maps then
    differed from the float32 CPU reference by up to 1.0 after normalization and classes
    flipped; with TF32 off, by 1.2e-4. A wrong map is worse than a slower one.
    """
    if torch.backends.cudnn.allow_tf32:
        log.info("TorchScript on CUDA: turning off TF32 for cuDNN convolutions (float32 maps)")
        torch.backends.cudnn.allow_tf32 = False


def load_explainer(
    path: str | os.PathLike, *, providers: list[str] | None = None, device: str | None = None
) -> Explainer:
    """Load an artifact: ONNX Runtime for ``.onnx``, libtorch for ``.pt``/``.ts``.

    Args:
        path: the artifact file.
        providers: ONNX Runtime execution providers (default: CUDA when usable, then CPU).
        device: torch device for TorchScript artifacts (default: CUDA when available).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return OnnxExplainer(path, providers=providers)
    if suffix in (".pt", ".ts", ".pth"):
        return TorchScriptExplainer(path, device=device)
    raise ArtifactError(f"{path}: unknown artifact type {suffix!r}; expected .onnx (ONNX) or .pt (TorchScript)")
