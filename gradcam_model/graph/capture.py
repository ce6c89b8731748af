"""Trace forward + ``autograd.grad`` into one FX graph of plain forward operators.

How it works:

1. The model runs with its parameters and buffers swapped for graph inputs; a
   forward hook swaps the target layer's output for a leaf ``A`` (and hands a clone
   downstream, so in-place ops after the layer work), and
   ``torch.autograd.grad(y^c, A)`` differentiates only from the logits back to that leaf.
2. ``make_fx`` traces it symbolically with only the batch (and, where the graph
   allows, height and width) dynamic; every ``*_backward`` op autograd records is
   replaced by our decomposition table, so the graph holds forward ops only.
3. The parameter inputs become buffers of the resulting ``GraphModule``, leaving
   ``forward(image[, class_index])``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext, is_concrete_int
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode

from ..errors import LayerError, UnsupportedOperatorError
from ._dce import eliminate_dead_writes
from ._trace_state import fresh_caches, reparametrized, without_mkldnn
from .capture_taps import Taps, check_target_output, forward_with_taps, input_gradient_outputs
from .decompositions import backward_decompositions, is_backward_op
from .methods import CAMMethod, postprocess
from .methods_extra import AUG_PASSES
from .methods_input import InputGradientMethod
from .probe import logits_of
from .reruns import ablated_logits, aug_smoothed, method_input

__all__ = ["CaptureSpec", "capture_forward", "explain_function", "trace_explainer"]

log = logging.getLogger(__name__)
aten = torch.ops.aten


class CaptureSpec:
    """What to compute: the target layer, method, number of classes and post-processing."""

    def __init__(
        self,
        layer_name: str,
        method: CAMMethod,
        *,
        top_k: int,
        class_input: bool,
        upsample: bool,
        normalize: bool,
        reshape: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.layer_name = layer_name
        # the layer's output (and its gradient) to [N, C, h, w]: channels-last, tokens; None: already
        self.reshape = reshape
        self.method = method
        self.top_k = top_k
        self.class_input = class_input
        self.upsample = upsample
        self.normalize = normalize
        self.ablation_cut: bool | None = None  # AblationCAM: the layer is the only path to the logits (probed)


def explain_function(
    model: nn.Module, layer: nn.Module, spec: CaptureSpec, originals: Sequence[torch.Tensor]
) -> Callable:
    """The function that gets traced: ``fn(tensors, image[, class_index]) -> 5 outputs``.

    ``tensors`` stand in for ``originals`` (the model's own parameters and buffers, one entry
    per tensor). It is also a valid eager computation (it is how ``reference_cam`` differs:
    that one calls the model directly with live parameters instead of tracing this).
    """

    def explain(tensors, image, class_index):
        with _ExportableForward() as forward, reparametrized(model, originals, tensors):
            batch = method_input(spec, image)
            logits, activations, taps = capture_forward(model, layer, spec, batch)
            head = forward.head_of(logits)
            ablated = ablated_logits(model, layer, spec, batch, activations)
            # inside: FullGrad's effective biases read the stand-in BatchNorm statistics
            return cam_outputs(logits, activations, image, spec, class_index, head=head, ablated=ablated, taps=taps)

    if spec.class_input:
        return explain
    return lambda tensors, image: explain(tensors, image, None)


class _GlobalMean(torch.autograd.Function):
    """``x.mean((-2, -1), keepdim=True)`` over a dynamic height and width, whose gradient
    divides by the pooled-element count summed on ``x``'s own device.

    Autograd's mean backward divides by ``h * w`` as a number: with a dynamic size that is
    a float scalar computed from the input's shape, which ONNX Runtime's CUDA provider
    computes on the CPU and copies to the GPU (a MemcpyFromHost node inside the graph: a
    synchronization, and no CUDA graphs). The sum of ``h * w`` ones is exact in float32
    below 2**24 elements, so the quotient is bit-identical.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.shape = x.shape
        ctx.count = torch.ones_like(x[(0,) * (x.dim() - 2)]).sum()
        return x.mean((-2, -1), keepdim=True)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.expand(ctx.shape) / ctx.count


class _ExportableForward(TorchFunctionMode):
    """Forward-side substitutions, applied before autograd sees the op.

    ``adaptive_avg_pool2d(x, 1)`` restrides its output with ``as_strided_`` when ``x``
    is channels-last (ConvNeXt's permutes make it so); autograd then records
    ``AsStridedBackward``, which functionalizes to ``as_strided_scatter``, an op
    torch.onnx cannot translate. The same mean without the restride has a plain
    backward. (Backward-side decompositions run after autograd and cannot help here.)

    It also remembers the last ``linear`` call, so that :meth:`head_of` can tell whether
    the logits are a Linear layer's output.
    """

    _POOLS = (torch._C._nn.adaptive_avg_pool2d, F.adaptive_avg_pool2d)
    _LINEAR = (torch._C._nn.linear, F.linear)

    def __init__(self) -> None:
        super().__init__()
        self._last_linear: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._POOLS:
            size = args[1] if len(args) > 1 else kwargs.get("output_size")
            if size in (1, (1, 1), [1, 1]):
                x = args[0]
                if all(is_concrete_int(n) for n in x.shape[-2:]):
                    return x.mean((-2, -1), keepdim=True)
                return _GlobalMean.apply(x)
        result = func(*args, **kwargs)
        if func in self._LINEAR:
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            self._last_linear = (args[0], weight, result)
        return result

    def head_of(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(h, W)`` when ``logits`` is the very tensor the last ``linear(h, W, b)`` returned."""
        if self._last_linear is None:
            return None
        features, weight, output = self._last_linear
        if output is not logits or features.dim() != 2 or weight.requires_grad:
            return None
        return features, weight


def capture_forward(model: nn.Module, layer: nn.Module | None, spec: CaptureSpec, image: torch.Tensor):
    """``(logits, activations, taps)`` of one forward pass: the target layer cut at a leaf for the
    layer methods (``taps`` None); for the input-gradient methods, see :mod:`.capture_taps`."""
    if isinstance(spec.method, InputGradientMethod):
        return forward_with_taps(model, layer, spec, image)
    return (*_forward_with_leaf(model, layer, spec.layer_name, image, spec.reshape), None)


def _forward_with_leaf(call: Callable, layer: nn.Module, layer_name: str, image: torch.Tensor, reshape=None):
    """Run ``call(image)`` with ``layer``'s output swapped for a leaf; return the logits and that leaf.

    The leaf keeps the layer's own layout; ``reshape`` (checked here on eager runs) makes
    it ``[N, C, h, w]``, and is applied to activations and gradients alike.
    """
    captured: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        check_target_output(output, layer_name, image, reshape)
        leaf = output.detach().requires_grad_(True)
        captured.append(leaf)
        return leaf.clone()  # in-place ops after the layer (ReLU(inplace=True)) act on the clone

    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = logits_of(call(image))
    finally:
        handle.remove()
    if len(captured) != 1:
        raise LayerError(
            f"layer {layer_name!r} ran {len(captured)} times in one forward pass; a target layer must run "
            "exactly once (a module reused at several places is ambiguous). Pick a layer from `gradcam layers`."
        )
    return logits, captured[0]


def cam_outputs(
    logits: torch.Tensor,
    activations: torch.Tensor,
    image: torch.Tensor,
    spec: CaptureSpec,
    class_index: torch.Tensor | None = None,
    *,
    head: tuple[torch.Tensor, torch.Tensor] | None = None,
    ablated: torch.Tensor | None = None,
    taps: Taps | None = None,
):
    """Class selection, one gradient per explained class, and the CAM maths (pure torch).

    ``taps`` (from :func:`capture_forward`) hand the input-gradient methods their tensors.

    ``head`` is ``(h, W)`` when the logits are ``h @ W^T + b``: the gradient of logit ``c``
    with respect to ``h`` is then the row ``W[c]``, the same numbers as autograd's product
    of a one-hot gradient with ``W`` but a gather of rows, which leaves ``W`` to the
    forward's product alone (ONNX Runtime pre-packs such a product's weight once more).
    A method's ``score(logits, classes)`` (FinerCAM) replaces the logit as what is differentiated.
    With ``+aug-smooth`` the logits and activations are those of ``augment(image)``: each pass
    picks its own classes by rank (a given class stays), its maps are normalized, flipped
    back and averaged (pytorch-grad-cam's ``forward_augmentation_smoothing``); the outputs
    other than the maps are the image's own (pass 0).
    """
    aug, n = spec.method.aug_smooth, image.shape[0]
    if spec.class_input:
        given = class_index.repeat(AUG_PASSES) if aug else class_index
        chosen = torch.where(given < 0, logits.detach().argmax(dim=1), given)[:, None]
    else:
        chosen = logits.detach().topk(spec.top_k, dim=1).indices
    if taps is not None:
        probabilities = torch.softmax(logits.detach(), dim=1)
        return input_gradient_outputs(logits, probabilities, chosen, activations, taps, spec, head)
    score = getattr(spec.method, "score", None)
    maps = []
    k_total = chosen.shape[1]
    for k in range(k_total):
        if ablated is not None:
            maps.append(torch.relu(spec.method.ablation_saliency(activations.detach(), logits.detach(), ablated,
                                                                 chosen[:, k])))  # fmt: skip
            continue
        if head is not None and score is None:
            output, seed = head[0], head[1].index_select(0, chosen[:, k])
        else:
            with torch.enable_grad():  # samples are independent in eval mode: one backward per k
                scores = score(logits, chosen[:, k]) if score else logits.gather(1, chosen[:, k : k + 1])
                output, seed = scores.sum(), None
        try:
            (grad,) = torch.autograd.grad(output, activations, seed, retain_graph=k + 1 < k_total)
        except RuntimeError as exc:
            raise LayerError(
                "the target layer has no gradient path to the logits (the logits do not depend on it); "
                "pick a layer on the path to the classifier, see `gradcam layers`."
            ) from exc
        if spec.reshape is not None:  # pytorch-grad-cam's reshape_transform: activations and gradients alike
            maps.append(spec.method(spec.reshape(activations.detach()), spec.reshape(grad)))
        else:
            maps.append(spec.method(activations.detach(), grad))
    cam = torch.stack(maps, dim=1)
    size = image.shape[-2:] if spec.upsample else None
    if aug:  # pytorch-grad-cam scales each pass's map; the mean is scaled again only if normalize
        cam = aug_smoothed(cam, size, spec.normalize)
        logits, chosen = logits[:n], chosen[:n]
    else:
        cam = postprocess(cam, size, spec.normalize)
    probabilities = torch.softmax(logits.detach(), dim=1)
    return logits.detach(), probabilities, chosen, probabilities.gather(1, chosen), cam


def _fake_inputs(mode: FakeTensorMode, tensors, image, class_index, dynamic_spatial: bool):
    dyn, static = DimDynamic.DYNAMIC, DimDynamic.STATIC
    img_dims = [dyn, static, dyn if dynamic_spatial else static, dyn if dynamic_spatial else static]
    fake_image = mode.from_tensor(image, symbolic_context=StatelessSymbolicContext(dynamic_sizes=img_dims))
    fake_tensors = [mode.from_tensor(t, static_shapes=True) for t in tensors]
    args = [fake_tensors, fake_image]
    if class_index is not None:
        args.append(mode.from_tensor(class_index, symbolic_context=StatelessSymbolicContext(dynamic_sizes=[dyn])))
    return args


def trace_explainer(
    model: nn.Module,
    layer: nn.Module,
    spec: CaptureSpec,
    image: torch.Tensor,
    *,
    dynamic_spatial: bool,
) -> fx.GraphModule:
    """Trace the explanation into a ``GraphModule`` with ``forward(image[, class_index])``.

    ``image`` must have a batch of at least 2: symbolic tracing specializes sizes 0 and 1.
    Raises ``StaticShapesRequired`` when ``dynamic_spatial`` is asked but a decomposition
    needs concrete spatial sizes.
    """
    # one entry per tensor (a shared module's parameters under their first name)
    named = [*model.named_parameters(), *model.named_buffers()]
    names = [n for n, _ in named]
    originals = [t for _, t in named]
    tensors = [t.detach() for t in originals]
    class_index = torch.full((image.shape[0],), -1, dtype=torch.long, device=image.device) if spec.class_input else None
    mode = FakeTensorMode(shape_env=ShapeEnv())
    args = _fake_inputs(mode, tensors, image, class_index, dynamic_spatial)
    fn = explain_function(model, layer, spec, originals)
    # the math kernel of scaled-dot-product attention differentiates into plain matmuls and
    # softmax; the fused flash/efficient kernels leave backward ops with no lowering.
    # Without MKLDNN, torch's LSTM decomposition takes its plain form (matmuls, sigmoid, tanh)
    # instead of aten.mkldnn_rnn_layer, the CPU kernel, which has no backward lowering and no
    # ONNX translation; the numbers are the same LSTM.
    with sdpa_kernel(SDPBackend.MATH), without_mkldnn(), fresh_caches(model):
        gm = make_fx(fn, decomposition_table=backward_decompositions(), tracing_mode="symbolic")(*args)
    _finalize(gm, names, tensors, spec)
    return gm


def _finalize(gm: fx.GraphModule, names: Sequence[str], tensors: Sequence[torch.Tensor], spec: CaptureSpec) -> None:
    """Parameters become buffers, detaches go, inputs get the contract's names, no backward op is left."""
    graph = gm.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    param_nodes, inputs = placeholders[: len(names)], placeholders[len(names) :]
    seen: dict[int, str] = {}
    for node, name, tensor in zip(param_nodes, names, tensors, strict=True):
        key = id(tensor)
        if key not in seen:  # tied weights stay one buffer
            attr = "p_" + name.replace(".", "_")
            gm.register_buffer(attr, tensor.clone())
            seen[key] = attr
        with graph.inserting_before(node):
            new = graph.get_attr(seen[key])
        node.replace_all_uses_with(new)
        graph.erase_node(node)
    for node, name in zip(inputs, ("image", "target_class"), strict=False):
        node.target = name
        node.name = name
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target in (aten.detach.default, aten.alias.default):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    # constants that decompositions built (pooling matrices...) become buffers too, so
    # that GradCAMModel.to(device) and torch.jit.load(map_location=...) move them
    buffers = dict(gm.named_buffers())
    for node in graph.nodes:
        if node.op == "get_attr" and node.target not in buffers:
            value = getattr(gm, node.target)
            if isinstance(value, torch.Tensor):
                delattr(gm, node.target)
                gm.register_buffer(node.target, value)
                buffers[node.target] = value
    # factory ops (zeros, arange, scalar_tensor...) were traced with device=<trace device>;
    # take the image's device instead so the graph runs wherever its input lives
    image = next(n for n in graph.nodes if n.op == "placeholder")
    with graph.inserting_after(image):
        device = graph.call_function(torch.ops.prim.device, (image,))
    for node in graph.nodes:
        if node.op == "call_function" and node is not device and "device" in node.kwargs:
            node.kwargs = {**node.kwargs, "device": device}
    # torch.onnx's default decompositions expand upsample_bilinear2d.default into index
    # arithmetic and gathers, but keep the .vec overload, which it lowers to one Resize
    for node in graph.nodes:
        if (
            node.op == "call_function"
            and node.target is aten.upsample_bilinear2d.default
            and len(node.args) == 3  # no explicit scales: the two overloads agree
            and not node.kwargs
        ):
            node.target = aten.upsample_bilinear2d.vec
            node.args = (*node.args, None)
    output = next(n for n in graph.nodes if n.op == "output")
    output.args = (tuple(output.args[0]),)
    graph._codegen = fx.graph.CodeGen()
    graph.eliminate_dead_code()
    if getattr(spec.method, "ablates", False):  # the rerun's layers below the target feed nothing
        eliminate_dead_writes(graph)
    for node in graph.nodes:
        if node.op == "call_function" and is_backward_op(node.target):
            raise UnsupportedOperatorError(str(node.target), spec.layer_name)
    graph.lint()
    gm.recompile()
