"""Find target layers: list the candidates, resolve a dotted name, pick one automatically."""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import InputError, LayerError, LayerNotFoundError, ModelOutputError, ModelTypeError
from ._state import eval_state
from ._too_small import too_small as explain_too_small
from .layouts import MAX_PREFIX_TOKENS, NCHW, Layout, axis_problem, classify

__all__ = [
    "LayerInfo",
    "list_layers",
    "resolve_layer",
    "auto_layer",
    "select_layer",
    "describe_layer",
    "uses_attention",
    "run_model",
    "check_model",
]


@dataclass(frozen=True)
class LayerInfo:
    """One candidate target layer.

    ``layout`` says how its output covers the image (``[N, C, h, w]``, channels-last,
    or transformer tokens) and reshapes it; ``problem`` is None for a layer that can be
    explained, else the reason it cannot (an attention matrix, windowed tokens, no
    gradient reaching the patch tokens...). ``passthrough`` marks modules that return
    their input unchanged (``nn.Identity``); ``inner`` marks tokens of another width than
    the block computing them takes and gives (q/k/v projections, MLP hidden units), and
    tokens computed inside a class-attention block (CaiT, CrossViT: it hands on only the
    class token): maps that can be explained, but not the model's token stream, so
    ``auto`` passes them by.
    """

    name: str
    type: str
    output_shape: tuple[int, ...]
    influences_logits: bool
    calls: int = 1
    auto: bool = False
    layout: Layout | None = NCHW
    problem: str | None = None
    passthrough: bool = False
    inner: bool = False

    @property
    def map_shape(self) -> tuple[int, ...]:
        """``(C, h, w)`` of the map this layer gives, after its layout's reshape."""
        if self.layout is None:
            return tuple(self.output_shape[1:])
        return tuple(self.layout(torch.empty(self.output_shape, device="meta")).shape[1:])


def check_model(model: object) -> None:
    """Raise ``ModelTypeError`` (one line, saying what to pass instead) unless ``model`` is an ``nn.Module``."""
    if isinstance(model, nn.Module):
        return
    if isinstance(model, Mapping):
        hint = "a state dict holds only weights: build the model, then model.load_state_dict(it)"
    elif isinstance(model, (str, os.PathLike)):
        hint = "build or load the model first (timm.create_model(name), torchvision.models.get_model(name))"
    else:
        hint = "pass the classifier module itself"
    raise ModelTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}; {hint}")


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


def _probe_size(size: tuple[int, int]) -> tuple[int, int]:
    """A taller input than ``size`` (same width): only the height axis of a real map grows."""
    return size[0] + max(size[0] // 2, 1), size[1]


def run_model(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """``model(image)`` as logits; an input too small for the model becomes an ``InputError`` saying so."""
    try:
        return _logits_of(model(image))
    except RuntimeError as exc:
        too_small = explain_too_small(model, image)
        if too_small is None:
            raise
        raise InputError(too_small) from exc


def list_layers(model: nn.Module, example_input: torch.Tensor) -> list[LayerInfo]:
    """Candidate target layers: modules whose output is a 4-D map or a token sequence.

    Runs the model once on ``example_input`` (in eval mode, without changing the
    caller's flags) and once on a taller input, and reports each module's output shape
    in call order, how it covers the image (``layout``: ``[N, C, h, w]``, channels-last
    or tokens), whether its gradient reaches the logits, why it cannot be explained
    (``problem``), and which one ``target_layer="auto"`` picks: the last map on the
    path to the logits (for token layers: the last layer of the token stream whose patch
    tokens still reach the logits, which for ViT is the literature's last ``norm1``).
    """
    check_model(model)
    with eval_state(model):
        with torch.enable_grad():
            seen = _observe(model, example_input, leaves=True)
        taller = _probe_shapes(model, example_input, {n for n, s in seen.items() if len(s.shape) == 4})
    infos = []
    for name, layer in seen.items():
        info = LayerInfo(name, layer.type, layer.shape, layer.reaches_logits, layer.calls, layout=layer.layout)
        problem = layer.problem
        if problem is None and layer.calls != 1:
            problem = (
                f"it ran {layer.calls} times in one forward pass (a module reused at several places); "
                "a target layer must run exactly once"
            )
        if problem is None and name in taller and layer.layout is not None and len(layer.shape) == 4:
            layout, problem = axis_problem(layer.layout, layer.shape, taller[name])
            info = replace(info, layout=layout)
        infos.append(replace(info, problem=problem, passthrough=layer.passthrough, inner=layer.inner))
    eligible = [i for i, info in enumerate(infos) if _auto_eligible(info)]
    if eligible:
        infos[eligible[-1]] = replace(infos[eligible[-1]], auto=True)
    return infos


def _auto_eligible(info: LayerInfo) -> bool:
    # the last map on the path to the logits, called once, more than one position, not a
    # pass-through (nn.Identity) and not the head's adaptive pooling (VGG's avgpool only
    # resamples `features`); among token layers only the token stream, whatever its modules'
    # types: a ViT's last block's norm1 (the patch tokens after it no longer reach a class-token
    # head: refused), the final norm or block of a token model with a pooled head (MViT, LeViT,
    # ResMLP's Affine), not a q/k/v projection or MLP hidden layer inside a block, nor anything inside
    # a class-attention block (CaiT's blocks_token_only: the token stream ends before them)
    if not info.influences_logits or info.calls != 1 or info.problem is not None or info.passthrough:
        return False
    if info.type.startswith("Adaptive") or info.inner:
        return False
    _, h, w = info.map_shape
    return h * w > 1


class _TokenModules:
    """What each module called on tokens takes and gives: its token widths, and whether it keeps
    only the prefix tokens (a class-attention block: CaiT's ``blocks_token_only``, CrossViT's fusion)."""

    def __init__(self) -> None:
        self.widths: dict[str, tuple[int, int]] = {}
        self.taken: dict[str, int] = {}  # tokens in
        self.to_prefix: set[str] = set()

    def enter(self, name: str, tokens: torch.Tensor) -> None:
        if name not in self.widths:
            self.widths[name] = (int(tokens.shape[-1]), -1)
            self.taken[name] = int(tokens.shape[1])

    def leave(self, name: str, output: object) -> None:
        if name not in self.widths or self.widths[name][1] >= 0:
            return
        if isinstance(output, torch.Tensor) and output.dim() > 0:
            self.widths[name] = (self.widths[name][0], int(output.shape[-1]))
            if output.dim() == 3 and int(output.shape[1]) <= min(MAX_PREFIX_TOKENS, self.taken[name] - 1):
                self.to_prefix.add(name)

    def inner(self, layer: _Seen) -> bool:
        """Tokens that are not the model's token stream: of another width than the innermost block
        computing them takes and gives (q/k/v, MLP hidden units), or computed inside a block that hands
        on only the class token (its k/v projections see the patches, its output does not)."""
        if not layer.enclosing or layer.enclosing[-1] not in self.widths:
            return False
        return layer.shape[-1] not in self.widths[layer.enclosing[-1]] or any(
            n in self.to_prefix for n in layer.enclosing
        )


@dataclass
class _Seen:
    """What one forward pass showed of a module with a 4-D or token output (its first call)."""

    type: str
    shape: tuple[int, ...]
    layout: Layout | None
    problem: str | None
    passthrough: bool
    node: torch.Tensor | None = None
    calls: int = 1
    reaches_logits: bool = True
    enclosing: tuple[str, ...] = ()  # the modules taking tokens whose forward computed it, innermost last
    inner: bool = False  # tokens that are not the token stream (see _TokenModules.inner)


def _observe(model: nn.Module, image: torch.Tensor, *, leaves: bool = False) -> dict[str, _Seen]:
    """Run ``model(image)`` and record every named module with a 4-D or token output, in call order.

    Each module's input is classified as an image map, a token sequence or something
    else; a 4-D tensor computed inside a module that takes tokens (attention matrices
    ``[N, heads, T, T]``) or anything computed inside a module taking something else
    (windowed tokens) is never a map of the image, however square it looks. With
    ``leaves``, each first output joins the autograd graph as a leaf (or a node) and one
    backward from the logits tells which layers, and which patch tokens, reach them.
    """
    size = (int(image.shape[2]), int(image.shape[3]))
    batch = int(image.shape[0])
    names = {id(m): n for n, m in model.named_modules() if n}
    seen: dict[str, _Seen] = {}
    stack: list[tuple[str, str | None, str]] = []  # per active module: its input's kind, a description, its name
    token_modules = _TokenModules()
    patch_grid: list[tuple[int, int]] = []  # h x w of the last image map seen: a ViT's patch grid
    # the kind of the last map seen: only a token sequence that follows tokens may be a pooled grid
    # (MViT, LeViT); after a 4-D map (Swin's channels-last stages) it may be one window
    last_kind: list[str] = []

    def grid_of(shape):
        pooled = bool(last_kind) and last_kind[-1] == "tokens"
        grid = patch_grid[-1] if patch_grid else None
        return classify(shape, size, batch, grid, pooled=pooled, image_channels=int(image.shape[1]))

    def kind_of(tensor) -> tuple[str, str | None]:
        if not isinstance(tensor, torch.Tensor) or tensor.dim() not in (3, 4):
            return "unknown", None
        layout, _ = grid_of(tuple(tensor.shape))
        text = "x".join(map(str, tensor.shape[1:]))
        if layout is None:
            return "other", f"a {text} input that is not an image map"
        return ("tokens", f"{text} tokens") if layout.kind == "tokens" else ("map", None)

    def enter(module, inputs):
        kind, text = kind_of(inputs[0] if inputs else None)
        name = names[id(module)]
        stack.append((kind, f"{name!r} ({type(module).__name__}), which takes {text}" if text else None, name))
        if kind == "tokens":
            token_modules.enter(name, inputs[0])

    def leave(module, inputs, output):
        stack.pop()
        name = names[id(module)]
        token_modules.leave(name, output)
        if not isinstance(output, torch.Tensor) or output.dim() not in (3, 4):
            return None
        if name in seen:
            seen[name].calls += 1
            return None
        shape = tuple(output.shape)
        layout, problem = grid_of(shape)
        if output.dim() == 3 and layout is None:
            return None  # a 3-D tensor that is not the image's tokens is no candidate at all
        bad = ("tokens", "other") if output.dim() == 4 else ("other",)
        inside = next((f"it is computed inside {why}" for kind, why, _ in stack if kind in bad), None)
        if inside:
            layout, problem = None, inside
        if layout is NCHW:
            patch_grid.append(shape[2:])
        if layout is not None:
            last_kind.append(layout.kind)
        layer = _Seen(type(module).__name__, shape, layout, problem, any(output is i for i in inputs))
        layer.enclosing = tuple(n for kind, _, n in stack if kind == "tokens")
        seen[name] = layer
        if not leaves:
            return None
        # the first candidate becomes a leaf; later ones stay connected to it
        layer.node = output if output.requires_grad else output.detach().requires_grad_(True)
        return layer.node.clone()  # downstream in-place ops act on the clone

    handles = []
    for module in model.modules():
        if id(module) in names:
            handles.append(module.register_forward_pre_hook(enter))
            handles.append(module.register_forward_hook(leave))
    try:
        logits = run_model(model, image)
        if leaves and seen:
            grads = torch.autograd.grad(logits.sum(), [s.node for s in seen.values()], allow_unused=True)
            for layer, grad in zip(seen.values(), grads, strict=True):
                _note_gradient(layer, grad)
    finally:
        for h in handles:
            h.remove()
    for layer in seen.values():
        layer.inner = layer.layout is not None and layer.layout.kind == "tokens" and token_modules.inner(layer)
    return seen


def _note_gradient(layer: _Seen, grad: torch.Tensor | None) -> None:
    layer.reaches_logits = grad is not None
    if grad is None or layer.layout is None or layer.layout.kind != "tokens" or layer.problem is not None:
        return
    if not bool(grad[:, layer.layout.prefix :].any()):
        # after the last block's attention only the class token reaches the head: the
        # patch tokens' gradient is exactly zero, and so would every map be
        layer.problem = (
            "its patch tokens do not reach the logits (the gradient is exactly zero: after the last attention "
            "only the prefix tokens feed the head); pick an earlier layer such as the last block's norm1"
        )


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


def describe_layer(model: nn.Module, layer_name: str, example_input: torch.Tensor) -> LayerInfo | None:
    """The ``LayerInfo`` of one layer (None when its output is neither a 4-D map nor tokens)."""
    resolve_layer(model, layer_name)
    return next((info for info in list_layers(model, example_input) if info.name == layer_name), None)


class _AttentionSpy(TorchFunctionMode):
    """Notes whether a forward pass computes attention (scaled dot products or a softmax before the end)."""

    _OPS = {F.scaled_dot_product_attention, F.softmax, torch.softmax, torch.Tensor.softmax}

    def __init__(self) -> None:
        super().__init__()
        self.seen = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.seen = self.seen or func in self._OPS
        return func(*args, **(kwargs or {}))


def uses_attention(model: nn.Module, example_input: torch.Tensor) -> bool:
    """Whether ``model`` computes attention (ViT, Swin...): one forward pass at batch 1, in eval mode."""
    spy = _AttentionSpy()
    with eval_state(model), torch.no_grad(), spy:
        model(example_input[:1])
    return spy.seen


def select_layer(model: nn.Module, target_layer: str, infos: list[LayerInfo]) -> LayerInfo | None:
    """The layer to explain among ``infos`` (from :func:`list_layers`): ``target_layer`` or the auto choice.

    Raises ``LayerNotFoundError`` for an unknown name and ``LayerError`` saying why a
    layer cannot be explained. None when the layer's output is neither a 4-D map nor
    tokens (the capture then names what it returns).
    """
    if target_layer != "auto":
        resolve_layer(model, target_layer)
        info = next((i for i in infos if i.name == target_layer), None)
        if info is not None and info.problem is not None:
            raise LayerError(
                f"layer {target_layer!r} cannot be explained: {info.problem}. Pick a layer from `gradcam layers`."
            )
        return info
    for info in infos:
        if info.auto:
            return info
    raise LayerError(
        "no layer of the model produces a map of the image ([N, C, h, w], channels-last or patch tokens) with "
        "more than one position on the path to the logits; use a larger example input or pass target_layer"
    )


def auto_layer(model: nn.Module, example_input: torch.Tensor) -> str:
    """The layer ``target_layer="auto"`` picks."""
    return select_layer(model, "auto", list_layers(model, example_input)).name
