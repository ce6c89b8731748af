"""The eager reference every artifact is validated against (hooks and a live backward pass, no tracing),
and the choice of a method's target layer and layout that the reference and the wrapper share."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

from ..errors import InputError, LayerError, MethodError
from ._state import eval_state
from .arguments import check_class_index, check_image
from .capture import CaptureSpec, cam_outputs, capture_forward
from .layers import list_layers, resolve_layer, select_layer
from .methods import CAMMethod, get_method
from .methods_input import InputGradientMethod
from .probe import cached_probe, run_model
from .reruns import ablated_logits, method_input

__all__ = ["layer_and_layout", "reference_cam", "reference_outputs", "reference_reshape", "target_of"]

log = logging.getLogger(__name__)


def reference_reshape(
    model: nn.Module, target_layer: str, image: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The reshape that :func:`reference_cam`'s ``reshape="auto"`` finds for images of ``image``'s
    size, to hand to many calls (each ``"auto"`` call looks the layer up in the model's probe).
    Refuses what ``"auto"`` refuses."""
    check_image(image, "image")
    if target_layer == "":  # a method that reads no target layer (fullgrad, guided-backprop)
        return _unchanged
    with torch.inference_mode(False), eval_state(model):
        image = image[:1].clone()
        _, layout = layer_and_layout(model, target_layer, list_layers(model, image), "auto")
    return layout if layout is not None else _unchanged


def _unchanged(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def reference_outputs(model, layer, spec, image, class_index=None):
    """The contract's outputs of capture ``spec`` for ``image``, by hooks and autograd (one eager pass)."""
    batch = method_input(spec, image)
    logits, activations, taps = capture_forward(model, layer, spec, batch)
    ablated = ablated_logits(model, layer, spec, batch, activations)
    return cam_outputs(logits, activations, image, spec, class_index, ablated=ablated, taps=taps)


def reference_cam(
    model: nn.Module,
    target_layer: str,
    image: torch.Tensor,
    class_index: torch.Tensor | None = None,
    method: str | CAMMethod = "gradcam",
    *,
    top_k: int = 1,
    upsample: bool = True,
    normalize: bool = True,
    return_all: bool = False,
    reshape: str | Callable[[torch.Tensor], torch.Tensor] | None = "auto",
):
    """Grad-CAM computed the independent way: hooks and a live backward pass, no tracing.

    It is the eager reference every artifact is validated against. ``class_index``
    ``[N]`` (``-1`` = top class) explains given classes; otherwise the ``top_k`` most
    likely ones. Returns the cam ``[N, K, H, W]``, or all five contract outputs
    with ``return_all=True``. The model is left as it was.
    """
    check_image(image, "image")
    cam_method = get_method(method)
    with torch.inference_mode(False), eval_state(model):
        image = image.clone() if image.is_inference() else image
        target_layer, layout, layer, _shape = target_of(model, cam_method, target_layer, reshape, image[:1], upsample)
        if class_index is not None:
            known = cached_probe(model, image[:1])
            with torch.no_grad():
                num_classes = known.num_classes if known else int(run_model(model, image[:1]).shape[-1])
            class_index = check_class_index(class_index, image.shape[0], num_classes).to(image.device)
        spec = CaptureSpec(
            target_layer,
            cam_method,
            top_k=top_k,
            class_input=class_index is not None,
            upsample=upsample,
            normalize=normalize,
            reshape=layout,
        )
        outputs = reference_outputs(model, layer, spec, image, class_index)
    outputs = tuple(o.detach() for o in outputs)
    return outputs if return_all else outputs[4]


def target_of(model, cam_method, target_layer, reshape, image, upsample: bool):
    """``(layer name, layout, layer, output shape)`` of the method's target layer (the shape ``(1, 0)`` when a
    custom reshape leaves it unprobed); ``("", None, None, None)`` for a method with none.

    FullGrad and guided backpropagation read no target layer: the argument is ignored (a
    warning says so when one is named) and artifacts record ``""``. The input-gradient
    methods refuse a model they do not apply to, and ``upsample=False`` (their maps are at
    input resolution).
    """
    if isinstance(cam_method, InputGradientMethod):
        cam_method.check_model(model)
        if not upsample:
            raise MethodError(f"method {cam_method.name!r} gives maps at input resolution; it takes no upsample=False")
        if not cam_method.uses_target_layer:
            if target_layer not in ("auto", ""):
                log.warning("method %r reads no target layer: %r is ignored", cam_method.name, target_layer)
            return "", None, None, None
    infos = [] if callable(reshape) else list_layers(model, image)
    layer_name, layout = layer_and_layout(model, target_layer, infos, reshape)
    shape = next((i.output_shape for i in infos if i.name == layer_name), (1, 0))
    return layer_name, layout, resolve_layer(model, layer_name), shape


def layer_and_layout(model, target_layer, infos, reshape):
    """The layer to explain and the reshape of its output to ``[N, C, h, w]`` (None: already so)."""
    if callable(reshape):  # the caller's own reshape (pytorch-grad-cam's reshape_transform): trusted
        if target_layer == "auto":
            raise InputError("a custom reshape needs an explicit target_layer")
        resolve_layer(model, target_layer)
        return target_layer, reshape
    if reshape not in ("auto", None):
        raise InputError(f"reshape must be 'auto', None or a callable, got {reshape!r}")
    info = select_layer(model, target_layer, infos)  # refuses what cannot be explained, before tracing
    if info is None:
        return target_layer, None  # not a map at all: the capture hook says what the layer returns
    if info.layout.kind == "NCHW":
        return info.name, None
    if reshape is None:
        raise LayerError(
            f"layer {info.name!r} is laid out {info.layout.describe(info.output_shape)}, not [N, C, h, w]; "
            "pass reshape='auto' to explain it"
        )
    return info.name, info.layout
