"""``GradCAMModel``: logits and Grad-CAM maps from one graph of plain forward ops."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from ..contract import INPUT_NAMES, OUTPUT_NAMES, Preprocessing
from ..errors import InputError, MethodError, foreign_errors
from ..models import architecture_name
from ..preprocessing import resolve as resolve_preprocessing
from ._state import eval_state
from .arguments import check_class_index, check_class_names, check_image, check_stats, check_top_k
from .capture import CaptureSpec, _forward_with_leaf, trace_explainer
from .decompositions import StaticShapesRequired
from .layers import check_model, uses_attention
from .methods import CAMMethod, get_method
from .probe import probe
from .reference import reference_outputs, target_of
from .reruns import is_cut

__all__ = ["GradCAMModel", "INPUT_NAMES", "OUTPUT_NAMES", "IMAGENET_MEAN", "IMAGENET_STD"]

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class GradCAMModel(nn.Module):
    """A classifier and its Grad-CAM as one module of plain forward operators.

    ``forward(image)`` (or ``forward(image, class_index)`` with ``class_input=True``)
    returns ``(logits [N,C], probabilities [N,C], class_index [N,K] int64,
    score [N,K], cam [N,K,H,W])``, and ``guided [N,K,3,H,W]`` for the guided methods
    (``contract.output_names``). The gradient of the explained logit with respect
    to the target layer is part of the graph, so the module needs no autograd and
    runs under ``torch.inference_mode()``; it is what the exporters write out.

    Args:
        model: an image classifier returning ``[N, C]`` logits. Left unchanged.
        target_layer: dotted module name (as in ``named_modules``) or ``"auto"``: the
            last layer with a spatial 4-D output on the path to the logits.
        method: a name from :data:`gradcam_model.METHODS` or a ``CAMMethod``.
        example_input: a ``[N, C, H, W]`` float tensor on the model's device; its
            values do not matter, its size fixes ``H, W`` where the graph cannot
            keep them dynamic (``fixed_size_reason`` then says why, in one line;
            None when they are dynamic). The batch is always dynamic.
        top_k: explain the ``k`` most likely classes of each image.
        class_input: take a ``class_index`` input ``[N]`` instead (``-1`` = top class).
        upsample: resize maps to the input size (else feature resolution).
        normalize: min-max normalize each map to ``[0, 1]``.
        class_names, mean, std, architecture: recorded in exported artifacts so a
            runtime can preprocess images and label results without other flags.
            ``mean``/``std`` describe how pixels in ``[0, 1]`` were normalized (default:
            what ``preprocess`` states, else ImageNet's).
            ``architecture`` defaults to the torchvision/timm factory name when it can
            be recognized (what ``gradcam validate`` rebuilds), else the class name.
        reshape: how the layer's output becomes ``[N, C, h, w]``. ``"auto"`` reads it
            off the model: channels-last ``[N, h, w, C]`` (Swin) is permuted, a token
            sequence ``[N, T, D]`` (ViT, DeiT) loses its prefix tokens (class,
            distillation) and its patch tokens are laid on the patch grid. ``None``
            accepts ``[N, C, h, w]`` layers only. A callable (pytorch-grad-cam's
            ``reshape_transform``) is applied to activations and gradients alike; it
            must be pure torch, since it is traced into the graph.
        preprocess: how pictures become inputs, recorded for every runtime (see
            :class:`~gradcam_model.contract.Preprocessing`): a ``Preprocessing``, a
            torchvision weights enum member (its ``transforms()``), a timm data config;
            None: timm's ``pretrained_cfg`` when the model has one, else a stretch.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: str = "auto",
        *,
        method: str | CAMMethod = "gradcam",
        example_input: torch.Tensor,
        top_k: int = 1,
        class_input: bool = False,
        upsample: bool = True,
        normalize: bool = True,
        class_names: Sequence[str] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        architecture: str | None = None,
        reshape: str | Callable[[torch.Tensor], torch.Tensor] | None = "auto",
        preprocess: Preprocessing | Mapping | object | None = None,
    ) -> None:
        super().__init__()
        check_model(model)
        check_image(example_input, "example_input")
        cam_method = get_method(method)
        check_top_k(top_k, class_input)
        channels = int(example_input.shape[1])
        resolved = resolve_preprocessing(model, preprocess, tuple(example_input.shape[2:]))
        mean = check_stats(mean if mean is not None else resolved.mean or IMAGENET_MEAN, "mean", channels)
        std = check_stats(std if std is not None else resolved.std or IMAGENET_STD, "std", channels)
        if any(v <= 0 for v in std):
            raise InputError(f"std must be positive, got {std}")
        started = time.perf_counter()
        # building needs autograd even when the caller sits in inference_mode / no_grad
        building = foreign_errors("building the Grad-CAM graph")
        with building, torch.inference_mode(False), eval_state(model), torch.no_grad():
            example_input = example_input.clone() if example_input.is_inference() else example_input
            layer_name, layout, layer, shape = target_of(model, cam_method, target_layer, reshape, example_input[:1],
                                                       upsample)  # fmt: skip
            num_classes = probe(model, example_input[:1]).num_classes
            if top_k > num_classes:
                raise InputError(f"top_k={top_k} exceeds the model's {num_classes} classes")
            class_names = check_class_names(class_names, num_classes)
            spec = CaptureSpec(layer_name, cam_method, top_k=top_k, class_input=class_input, upsample=upsample,
                               normalize=normalize, reshape=layout)  # fmt: skip
            _check_method_applies(model, layer, spec, shape, num_classes, example_input)
            # symbolic tracing specializes a batch of 1: trace with at least 2
            trace_input = example_input if example_input.shape[0] >= 2 else example_input.expand(2, -1, -1, -1)
            # transformer blocks: window padding and patch grids make a symbolic height/width
            # cost minutes of shape reasoning (torchvision swin_t: 306 s) for little gain
            graph, fixed_reason = _trace(
                model, layer, spec, trace_input.contiguous(), not uses_attention(model, example_input)
            )
        self.graph = graph
        self.target_layer = layer_name
        self.layout = getattr(layout, "kind", "custom" if layout is not None else "NCHW")
        self.method = cam_method.name
        self.top_k = top_k
        self.class_input = class_input
        self.upsample = upsample
        self.normalize = normalize
        self.num_classes = num_classes
        self.in_channels = int(example_input.shape[1])
        self.input_size = None if fixed_reason is None else (int(example_input.shape[2]), int(example_input.shape[3]))
        self.fixed_size_reason = fixed_reason  # why height/width are fixed; None when they are dynamic
        self.example_size = (int(example_input.shape[2]), int(example_input.shape[3]))
        self.architecture = architecture or architecture_name(model, num_classes)
        self.class_names = class_names
        self.mean = mean
        self.std = std
        self.preprocessing = resolved.preprocessing
        self.preprocessing_source = resolved.source
        self.build_seconds = time.perf_counter() - started
        dynamic = "dynamic" if fixed_reason is None else "static"
        log.info("built Grad-CAM graph for %s at %r (%s, %s spatial) in %.1f s",
                 self.architecture, layer_name, self.method, dynamic, self.build_seconds)  # fmt: skip

    @property
    def dynamic_spatial(self) -> bool:
        return self.input_size is None

    def forward(self, image: torch.Tensor, class_index: torch.Tensor | None = None):
        check_image(image, "image", channels=self.in_channels, size=self.input_size)
        if self.class_input:
            if class_index is None:
                class_index = torch.full((image.shape[0],), -1, dtype=torch.long, device=image.device)
            class_index = check_class_index(class_index, image.shape[0], self.num_classes)
            return self.graph(image, class_index.to(image.device))
        if class_index is not None:
            raise InputError("this model explains its top-k classes; build it with class_input=True to pass classes")
        return self.graph(image)


_ATTENTION = (
    "the model computes attention: a symbolic height/width through patch grids and window padding "
    "costs minutes of shape reasoning (torchvision swin_t: 306 s)"
)


def _trace(model, layer, spec, image, try_dynamic: bool = True):
    """The traced graph and why its height/width are fixed (None: dynamic, verified at another size)."""
    h, w = (int(s) for s in image.shape[2:])
    if try_dynamic:
        log.info("tracing the forward pass and the gradient with a dynamic height/width")
        graph, reason = _dynamic_trace(model, layer, spec, image)
        if reason is None:
            return graph, None
    else:
        reason = _ATTENTION
    log.info("height/width fixed at %dx%d: %s", h, w, reason)
    log.info("tracing the forward pass and the gradient at %dx%d", h, w)
    return trace_explainer(model, layer, spec, image, dynamic_spatial=False), reason


def _dynamic_trace(model, layer, spec, image):
    """A graph with a symbolic height/width and None, or None and why the sizes must be fixed."""
    try:
        graph = trace_explainer(model, layer, spec, image, dynamic_spatial=True)
    except StaticShapesRequired as why:
        return None, f"the gradient of {_decomposition_of(why)} needs concrete sizes ({why})"
    h, w = image.shape[2:]
    other = (h + 33, w + 17)
    log.info("checking the dynamic-size graph at %dx%d against the eager model", *other)
    gen = torch.Generator().manual_seed(0)  # leave the caller's RNG state alone
    probe = torch.randn(1, image.shape[1], *other, generator=gen, dtype=image.dtype).to(image.device)
    classes = (torch.full((1,), -1, dtype=torch.long, device=image.device),) if spec.class_input else ()
    try:
        with torch.inference_mode():
            got = graph(probe, *classes)
        want = reference_outputs(model, layer, spec, probe, *classes)
    except Exception as exc:  # any failure at another size means sizes got baked in
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        return None, f"the graph traced with a symbolic size failed at {other[0]}x{other[1]} ({first[:200]})"
    if not all(g.shape == r.shape for g, r in zip(got, want, strict=True)):
        return None, f"the graph traced with a symbolic size gave other output shapes at {other[0]}x{other[1]}"
    if not torch.allclose(got[0], want[0], rtol=1e-3, atol=1e-4):
        return None, f"the graph traced with a symbolic size gave other logits at {other[0]}x{other[1]}"
    return graph, None


def _decomposition_of(exc: BaseException) -> str:
    """The backward op whose decomposition raised ``exc`` (its outermost frame in decompositions.py)."""
    from . import decompositions

    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_filename == decompositions.__file__:
            return code.co_name.lstrip("_")
        tb = tb.tb_next
    return "a backward op"


def _check_method_applies(model, layer, spec: CaptureSpec, shape, num_classes: int, image: torch.Tensor) -> None:
    """Refuse a method that does not apply to this layer or model; note where AblationCAM cuts the network."""
    method = spec.method
    if hasattr(method, "check_applies"):  # FinerCAM, AblationCAM
        applies = {"layer_name": spec.layer_name, "output_shape": shape, "layout": spec.reshape}
        method.check_applies(**applies, num_classes=num_classes)
    if getattr(method, "requires_gap_linear_head", False):
        _check_gap_linear_head(model, layer, spec.layer_name, image[:2], spec.reshape)
    if getattr(method, "ablates", False):  # probed eagerly: the trace cannot try and fail
        spec.ablation_cut = is_cut(model, layer, image)


def _check_gap_linear_head(model: nn.Module, layer: nn.Module, layer_name: str, image: torch.Tensor, layout) -> None:
    linears: list[tuple[nn.Linear, torch.Tensor]] = []
    hooks = [
        m.register_forward_hook(lambda mod, _i, out: linears.append((mod, out)))
        for m in model.modules()
        if isinstance(m, nn.Linear)
    ]
    try:
        logits, activations = _forward_with_leaf(model, layer, layer_name, image, layout)
        activations = layout(activations) if layout is not None else activations
    finally:
        for h in hooks:
            h.remove()
    reason = None
    if not linears or linears[-1][1].shape != logits.shape or not torch.equal(linears[-1][1], logits):
        reason = "the logits are not the output of an nn.Linear"
    else:
        head = linears[-1][0]
        if head.in_features != activations.shape[1]:
            reason = (
                f"the final Linear takes {head.in_features} features, the layer has {activations.shape[1]} channels"
            )
        else:
            expected = head(activations.detach().mean((2, 3)))
            if not torch.allclose(expected, logits.detach(), rtol=1e-4, atol=1e-5 * float(logits.abs().max()) + 1e-6):
                reason = "something other than a global average pool lies between the layer and the final Linear"
    if reason:
        raise MethodError(
            f"method 'cam' needs layer {layer_name!r} to feed a global-average-pool + Linear head, but {reason}; "
            "use 'gradcam', which generalizes CAM to any head."
        )
