"""The contestants of a benchmark: the logits-only floor, our artifacts, pytorch-grad-cam and Captum."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import GradCAMError
from ..export.onnx import DEFAULT_OPSET, quiet
from ..graph.layers import resolve_layer
from ..runtime.explainer import cuda_provider
from .configs import BenchConfig

__all__ = ["as_map", "contestants", "export_logits_onnx", "normalized", "ort_runner", "ort_session"]


def export_logits_onnx(model: nn.Module, example: torch.Tensor, path: Path, *, dynamic_spatial: bool = False) -> None:
    """The floor: the plain model as ONNX, same exporter and opset as our artifacts, and the same
    dynamic axes: the batch, and height/width when the artifact has them.

    Dynamic height/width alone change ONNX Runtime's memory: it cannot plan sizes ahead,
    and after its first run it keeps both the arena chunks of that run and a block for the
    recorded memory pattern (measured at batch 8: mobilenet_v3_large logits-only 86 MB
    peak with a fixed size, 132 MB with dynamic height/width; Grad-CAM 95 and 141 MB).
    A floor of fixed size would count that against the explanation.
    """
    axes = {0: torch.export.Dim.DYNAMIC}
    if dynamic_spatial:
        axes.update({2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC})
    with quiet(), torch.inference_mode(False):
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=["image"],
            output_names=["logits"],
            opset_version=DEFAULT_OPSET,
            dynamic_shapes=(axes,),
            external_data=False,
            optimize=True,
            verbose=False,
        )
    path.write_bytes(program.model_proto.SerializeToString())


def ort_session(path: Path, threads: int, spinning: bool, device: torch.device):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if device.type == "cuda":
        providers = [cuda_provider(device.index or 0), "CPUExecutionProvider"]  # float32 math, as our runtime
    else:
        providers = ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    if device.type == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider":
        # ONNX Runtime falls back to the CPU silently; CPU figures must not pass for GPU ones
        raise GradCAMError(
            f"ONNX Runtime could not start its CUDA provider for {path.name} "
            f"(available: {', '.join(ort.get_available_providers())}); install onnxruntime-gpu "
            "matching this CUDA, or run the benchmark with --device cpu"
        )
    return session


def ort_runner(session, image: torch.Tensor, output: int, *, bind: bool | None = None) -> Callable[[], object]:
    """One ORT run on ``image`` returning output ``output``.

    On the CPU the input is the numpy view of the tensor (``session.run``, what a
    service does). On a GPU (``bind``, the default there) the input stays in device
    memory, bound by pointer like the torch contestants' input, and the outputs are
    allocated on the same device: the timed call includes no host-device copy. The
    returned OrtValue is copied to the host only for the parity check, after timing.
    """
    if not (image.is_cuda if bind is None else bind):
        array = image.numpy()
        return lambda: session.run(None, {"image": array})[output]
    kind, index = image.device.type, image.device.index or 0
    image = image.contiguous()
    binding = session.io_binding()
    binding.bind_input("image", kind, index, np.float32, list(image.shape), image.data_ptr())
    for out in session.get_outputs():
        binding.bind_output(out.name, kind, index)

    def run(_bound=image):  # holds the tensor whose memory the binding points into
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return binding.get_outputs()[output]

    return run


def contestants(
    config: BenchConfig,
    model: nn.Module,
    wrapper,
    paths: dict[str, Path],
    image: torch.Tensor,
    *,
    threads: int,
    spinning: bool,
    stack: contextlib.ExitStack,
) -> dict[str, Callable[[], object]]:
    """Zero-argument callables, one per contestant, each returning its map (or logits)."""
    from ..graph.reference import reference_cam
    from ..runtime.explainer import TorchScriptExplainer

    device = image.device
    ort_logits = ort_session(paths["onnx_logits"], threads, spinning, device)
    ort_gradcam = ort_session(paths["onnx"], threads, spinning, device)
    scripted = TorchScriptExplainer(paths["torchscript"], device=str(device)).module

    def torch_logits():
        with torch.inference_mode():
            return model(image)

    def gradcam_eager():
        with torch.inference_mode():
            return wrapper(image)[4][:, 0]

    def torchscript():
        with torch.inference_mode():
            return scripted(image)[4][:, 0]

    return {
        "torch_logits": torch_logits,
        "reference_cam": lambda: reference_cam(model, config.layer, image)[:, 0],
        "gradcam_eager": gradcam_eager,
        "ort_logits": ort_runner(ort_logits, image, 0),
        "ort_gradcam": ort_runner(ort_gradcam, image, 4),
        "torchscript": torchscript,
        **_libraries(config, model, image, stack),
    }


def _libraries(config: BenchConfig, model: nn.Module, image: torch.Tensor, stack: contextlib.ExitStack) -> dict:
    """The pytorch-grad-cam and Captum contestants, each on its own copy of the model."""
    try:
        from captum.attr import LayerAttribution, LayerGradCam
        from pytorch_grad_cam import GradCAM
    except ImportError as exc:
        raise GradCAMError(
            f"the benchmark compares against pytorch-grad-cam and Captum; pip install 'gradcam_model[bench]' ({exc})"
        ) from exc

    # pytorch-grad-cam keeps its hooks on the model it is given: a copy of its own,
    # so they never run inside the other contestants' forward passes
    pgc_model = copy.deepcopy(model)
    pgc = GradCAM(model=pgc_model, target_layers=[resolve_layer(pgc_model, config.layer)])
    # not `with GradCAM(...)`: its __exit__ swallows IndexError
    stack.callback(pgc.activations_and_grads.release)

    captum_model = copy.deepcopy(model)
    captum = LayerGradCam(captum_model, resolve_layer(captum_model, config.layer))
    with torch.no_grad():  # not inference_mode: Captum's autograd would refuse the inference tensor
        # Captum needs the class up front: it gets the top class for free (computed
        # here, outside the timed region), which can only flatter Captum
        top = model(image).argmax(dim=1)

    def captum_run():
        maps = captum.attribute(image, target=top, relu_attributions=True)
        return LayerAttribution.interpolate(maps, tuple(image.shape[2:]), interpolate_mode="bilinear")[:, 0]

    return {"pytorch_grad_cam": lambda: pgc(input_tensor=image, targets=None), "captum": captum_run}


def as_map(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        array = value.detach().cpu().numpy()
    elif hasattr(value, "numpy"):  # an OrtValue in device memory
        array = value.numpy()
    else:
        array = np.asarray(value)
    if array.ndim == 4:  # [N, 1, H, W] from ONNX Runtime
        array = array[:, 0]
    return array.astype(np.float64)


def normalized(maps: np.ndarray) -> np.ndarray:
    """Min-max normalize each map (Captum returns raw ReLU'd maps)."""
    flat = maps.reshape(maps.shape[0], -1)
    low, high = flat.min(axis=1, keepdims=True), flat.max(axis=1, keepdims=True)
    span = np.where(high > low, high - low, 1.0)
    return ((flat - low) / span * (high > low)).reshape(maps.shape)
