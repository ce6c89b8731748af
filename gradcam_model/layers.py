"""Find target layers: list the candidates, resolve a dotted name, pick one automatically."""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass

import torch
from torch import nn

from ._state import eval_state
from .errors import InputError, LayerError, LayerNotFoundError, ModelOutputError

__all__ = [
    "LayerInfo",
    "list_layers",
    "resolve_layer",
    "auto_layer",
    "check_target",
    "grid_problem",
    "layout_problem",
    "run_model",
]


@dataclass(frozen=True)
class LayerInfo:
    """One candidate target layer.

    ``grid`` is None when the output is a real ``[N, C, h, w]`` map of the input, else
    the reason it is not one (channels-last, heads x tokens x dims...): such a layer is
    never explained, since its maps would be read along the wrong axes.
    ``passthrough`` marks modules that return their input unchanged (``nn.Identity``).
    """

    name: str
    type: str
    output_shape: tuple[int, ...]
    influences_logits: bool
    calls: int = 1
    auto: bool = False
    grid: str | None = None
    passthrough: bool = False


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """Return the sub-module called ``name`` (as in ``named_modules``), or raise ``LayerNotFoundError``."""
    modules = dict(model.named_modules())
    if not isinstance(name, str) or name not in modules or name == "":
        names = [n for n in modules if n]
        raise LayerNotFoundError(str(name), difflib.get_close_matches(str(name), names, n=3, cutoff=0.5))
    return modules[name]


def _logits_of(output: object) -> torch.Tensor:
    if isinstance(output, torch.Tensor) and output.dim() == 2:
        return output
    kind = f"a tensor of shape {tuple(output.shape)}" if isinstance(output, torch.Tensor) else type(output).__name__
    raise ModelOutputError(
        f"the model returned {kind}; expected logits of shape [N, num_classes]. "
        "Wrap the model so that forward returns the logits tensor."
    )


def grid_problem(output_shape: tuple[int, ...], input_size: tuple[int, int]) -> str | None:
    """Why a 4-D output cannot be the ``[N, C, h, w]`` map of an ``H x W`` input, or None.

    A feature map of a CNN covers the image with one stride ``s`` along both axes:
    ``h ~ H / s`` and ``w ~ W / s`` (give or take one row for padding and rounding).
    A channels-last ``[N, h, w, C]`` tensor (Swin) read as NCHW has ``w = C``, and a
    ``[N, heads, tokens, dims]`` tensor (ViT attention) has sizes unrelated to the image:
    no single stride fits both axes, and their "maps" would be stripes.
    """
    h, w = int(output_shape[2]), int(output_shape[3])
    height, width = input_size

    def strides(size: int, n: int) -> tuple[float, float]:
        return size / (n + 1), (size / (n - 1) if n > 1 else math.inf)

    (lo_h, hi_h), (lo_w, hi_w) = strides(height, h), strides(width, w)
    if max(lo_h, lo_w) <= min(hi_h, hi_w):
        return None
    c = int(output_shape[1])
    return (
        f"its output {c}x{h}x{w} is not a [C, h, w] map of the {height}x{width} input: no single stride "
        f"turns {height}x{width} into {h}x{w} (a channels-last [N, h, w, C] tensor, or tokens, read as NCHW "
        "would give striped maps)"
    )


def _probe_size(size: tuple[int, int]) -> tuple[int, int]:
    """A taller input than ``size`` (same width): a real map grows along dim 2 only."""
    return size[0] + max(size[0] // 2, 1), size[1]


def _axis_problem(shape: tuple[int, ...], taller: tuple[int, ...]) -> str | None:
    """Why a layer's output, seen at the example size and at a taller input, is not NCHW, or None."""
    if shape[1] != taller[1] or shape[3] != taller[3]:
        changed = [str(d) for d in (1, 3) if shape[d] != taller[d]]
        return (
            f"a taller input changes its dimension {' and '.join(changed)} "
            f"({'x'.join(map(str, shape[1:]))} -> {'x'.join(map(str, taller[1:]))}), not the height (dimension 2): "
            "it is not laid out [N, C, h, w] (channels-last [N, h, w, C]?)"
        )
    return None


def run_model(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """``model(image)`` as logits; an input too small for the model becomes an ``InputError`` saying so."""
    try:
        return _logits_of(model(image))
    except RuntimeError as exc:
        too_small = _too_small(model, image)
        if too_small is None:
            raise
        raise InputError(too_small) from exc


def _too_small(model: nn.Module, image: torch.Tensor) -> str | None:
    """Explain a failed forward pass if a larger input would have worked, else None."""
    height, width = int(image.shape[2]), int(image.shape[3])

    def works(scale: float) -> bool:
        size = (max(1, math.ceil(height * scale)), max(1, math.ceil(width * scale)))
        try:
            with torch.no_grad():
                model(torch.zeros(1, image.shape[1], *size, dtype=image.dtype, device=image.device))
        except RuntimeError:
            return False
        return True

    scale = 2.0
    while not works(scale):
        scale *= 2
        if max(height, width) * scale > 1024:
            return None  # not a size problem
    low, high = scale / 2, scale  # fails at low, works at high: bisect the smallest working scale
    for _ in range(12):
        mid = (low + high) / 2
        low, high = (low, mid) if works(mid) else (mid, high)
    smallest = (math.ceil(height * high), math.ceil(width * high))
    where = _failing_module(model, image)
    return (
        f"input {height}x{width} is too small for this model{where}; the smallest input of this aspect "
        f"ratio that works is about {smallest[0]}x{smallest[1]}: use a larger input size"
    )


def _failing_module(model: nn.Module, image: torch.Tensor) -> str:
    """Name the innermost module whose forward raised, with the feature map it was given."""
    stack: list[tuple[str, str, str]] = []
    handles = []

    def enter(name):
        def hook(module, inputs):
            shape = inputs[0].shape if inputs and isinstance(inputs[0], torch.Tensor) else None
            size = "x".join(map(str, shape[1:])) if shape is not None and len(shape) > 1 else "?"
            stack.append((name, type(module).__name__, size))

        return hook

    def leave(_module, _inputs, _output):
        stack.pop()

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_pre_hook(enter(name)))
            handles.append(module.register_forward_hook(leave))
    try:
        with torch.no_grad():
            model(image[:1])
    except RuntimeError:
        pass  # expected: the stack now ends at the module that raised
    finally:
        for h in handles:
            h.remove()
    if not stack:
        return ""
    name, kind, size = stack[-1]
    return f": the feature map reaching {name!r} ({kind}) is only {size}"


def list_layers(model: nn.Module, example_input: torch.Tensor) -> list[LayerInfo]:
    """Candidate target layers: modules whose output is a 4-D tensor.

    Runs the model once on ``example_input`` (in eval mode, without changing the
    caller's flags) and once on a taller input, and reports each module's output shape
    in call order, whether it has a gradient path to the logits, whether the output
    really is an ``[N, C, h, w]`` map of the image (``grid``), and which one
    ``target_layer="auto"`` picks: the last real map on the path to the logits.
    """
    size = (int(example_input.shape[2]), int(example_input.shape[3]))
    with eval_state(model):
        with torch.enable_grad():
            seen = _observe(model, example_input, leaves=True)
        taller = _probe_shapes(model, example_input, set(seen))
    infos = []
    for name, layer in seen.items():
        problem = layer.context or grid_problem(layer.shape, size)
        if problem is None and name in taller:
            problem = _axis_problem(layer.shape, taller[name])
        infos.append(
            LayerInfo(
                name,
                layer.type,
                layer.shape,
                layer.reaches_logits,
                layer.calls,
                grid=problem,
                passthrough=layer.passthrough,
            )
        )
    # auto: the last real map on the path to the logits, called once, more than one pixel,
    # not a pass-through (nn.Identity) and not the head's adaptive pooling (VGG's avgpool
    # only resamples `features`)
    eligible = [
        i
        for i, info in enumerate(infos)
        if info.influences_logits
        and info.calls == 1
        and info.grid is None
        and not info.passthrough
        and info.output_shape[2] * info.output_shape[3] > 1
        and not info.type.startswith("Adaptive")
    ]
    if eligible:
        pick = infos[eligible[-1]]
        infos[eligible[-1]] = LayerInfo(**{**pick.__dict__, "auto": True})
    return infos


@dataclass
class _Seen:
    """What one forward pass showed of a module with a 4-D output (its first call)."""

    type: str
    shape: tuple[int, ...]
    context: str | None  # why an enclosing module's input is not an image map (tokens...), or None
    passthrough: bool
    node: torch.Tensor | None = None
    calls: int = 1
    reaches_logits: bool = True


def _observe(model: nn.Module, image: torch.Tensor, *, leaves: bool = False) -> dict[str, _Seen]:
    """Run ``model(image)`` and record every named module with a 4-D output, in call order.

    A 4-D tensor computed inside a module whose input is not an image map (a transformer
    block taking ``[N, T, D]`` tokens: its attention matrices are ``[N, heads, T, T]``)
    gets ``context``: such a tensor is never a map of the image, however square it looks.
    With ``leaves``, each first output becomes a leaf of the autograd graph and one
    backward from the logits tells which layers reach them.
    """
    size = (int(image.shape[2]), int(image.shape[3]))
    names = {id(m): n for n, m in model.named_modules() if n}
    seen: dict[str, _Seen] = {}
    stack: list[str | None] = []  # per active module: why its input is not an image map, or None
    handles = []

    def enter(module, inputs):
        first = inputs[0] if inputs else None
        why = None
        if isinstance(first, torch.Tensor) and first.dim() != 4:
            why = f"a {first.dim()}-D input {'x'.join(map(str, first.shape[1:]))} (tokens, not an image map)"
        elif isinstance(first, torch.Tensor) and grid_problem(tuple(first.shape), size) is not None:
            why = f"a {'x'.join(map(str, first.shape[1:]))} input that is not an image map (channels-last?)"
        stack.append(f"{names[id(module)]!r} ({type(module).__name__}), which takes {why}" if why else None)

    def leave(module, inputs, output):
        stack.pop()
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            return None
        name = names[id(module)]
        if name in seen:
            seen[name].calls += 1
            return None
        context = next((f"it is computed inside {why}" for why in stack if why), None)
        layer = _Seen(type(module).__name__, tuple(output.shape), context, any(output is i for i in inputs))
        seen[name] = layer
        if not leaves:
            return None
        # the first candidate becomes a leaf; later ones stay connected to it
        layer.node = output if output.requires_grad else output.detach().requires_grad_(True)
        return layer.node.clone()  # downstream in-place ops act on the clone

    for module in model.modules():
        if id(module) in names:
            handles.append(module.register_forward_pre_hook(enter))
            handles.append(module.register_forward_hook(leave))
    try:
        logits = run_model(model, image)
        if leaves and seen:
            nodes = [layer.node for layer in seen.values()]
            grads = torch.autograd.grad(logits.sum(), nodes, allow_unused=True)
            for layer, grad in zip(seen.values(), grads, strict=True):
                layer.reaches_logits = grad is not None
    finally:
        for h in handles:
            h.remove()
    return seen


def _probe_shapes(model: nn.Module, example_input: torch.Tensor, wanted: set[str]) -> dict[str, tuple[int, ...]]:
    """Output shapes of the ``wanted`` layers at a taller input; empty if the model refuses that size."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, module in model.named_modules():
        if name in wanted:

            def hook(_m, _i, output, name=name):
                if isinstance(output, torch.Tensor) and name not in shapes:
                    shapes[name] = tuple(output.shape)

            handles.append(module.register_forward_hook(hook))
    size = _probe_size((int(example_input.shape[2]), int(example_input.shape[3])))
    probe = torch.zeros(1, example_input.shape[1], *size, dtype=example_input.dtype, device=example_input.device)
    try:
        with torch.no_grad():
            model(probe)
    except Exception:  # noqa: BLE001 - fixed-size models (ViT, Swin) refuse other sizes; then we cannot probe
        return {}
    finally:
        for h in handles:
            h.remove()
    return shapes


def layout_problem(model: nn.Module, layer_name: str, image: torch.Tensor) -> str | None:
    """Why ``layer_name``'s 4-D output is not an ``[N, C, h, w]`` map of ``image``, or None.

    Two forward passes at batch 1 (the image's size and a taller one).
    """
    with torch.no_grad():
        layer = _observe(model, image[:1]).get(layer_name)
    if layer is None:
        return None  # not a 4-D output: the capture names what it returns
    problem = layer.context or grid_problem(layer.shape, tuple(image.shape[2:]))
    taller = _probe_shapes(model, image[:1], {layer_name}).get(layer_name)
    if problem is None and taller is not None and len(taller) == 4:
        problem = _axis_problem(layer.shape, taller)
    return problem


def check_target(model: nn.Module, layer_name: str, example_input: torch.Tensor) -> LayerInfo | None:
    """The candidate ``layer_name`` (None when its output is not 4-D: the capture names what it returns),
    or a ``LayerError`` saying why it cannot be explained."""
    resolve_layer(model, layer_name)
    infos = {info.name: info for info in list_layers(model, example_input)}
    info = infos.get(layer_name)
    if info is None:
        return None
    if info.grid is not None:
        raise LayerError(
            f"layer {layer_name!r} cannot be explained: {info.grid}. Transformer token and channels-last layers "
            "are not supported yet; pick a convolutional [N, C, h, w] layer from `gradcam layers`."
        )
    return info


def auto_layer(model: nn.Module, example_input: torch.Tensor) -> str:
    """The layer ``target_layer="auto"`` picks: the last real ``[N, C, h, w]`` map on the path to the logits."""
    for info in list_layers(model, example_input):
        if info.auto:
            return info.name
    raise LayerError(
        "no layer of the model produces a 4-D [N, C, h, w] map of the image (h*w > 1) on the path to the "
        "logits; use a larger example input or pass target_layer explicitly (transformer token layers are "
        "not supported yet)."
    )
