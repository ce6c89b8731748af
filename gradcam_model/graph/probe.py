"""One probe of the model: what every module gives, recorded once per model and input size.

A forward pass with hooks on every named module records each 4-D or token output (its
shape, layout, call count, whether it sits inside attention or takes tokens), whether its
gradient reaches the logits, the number of classes and whether the model computes
attention; one more pass at a taller input answers which axis is the height. Layer
listing, layer resolution, ``auto``, the layout and reshape choice, the fixed-size
decision and ``reference_cam``'s layer lookup all read this record (:func:`probe`), so
building a graph runs the model for it once, and a reference for a model already probed
at that size runs it not at all.

The record is kept per model object, keyed by the input's shape, dtype and device and by a
fingerprint of the model: its modules (names, identities, types) and the identities and
version counters of its parameters and buffers. Replacing a module or loading weights
(``load_state_dict`` copies in place, which bumps the version counters) probes again.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import InputError, ModelOutputError
from ._state import eval_state
from ._too_small import too_small as explain_too_small
from .layouts import MAX_PREFIX_TOKENS, NCHW, Layout, classify

__all__ = ["ModelProbe", "SeenLayer", "cached_probe", "logits_of", "probe", "run_model"]


def logits_of(output: object) -> torch.Tensor:
    """``output`` if it is ``[N, num_classes]`` logits, else a ``ModelOutputError`` saying what to wrap."""
    if isinstance(output, torch.Tensor) and output.dim() == 2:
        return output
    kind = f"a tensor of shape {tuple(output.shape)}" if isinstance(output, torch.Tensor) else type(output).__name__
    raise ModelOutputError(
        f"the model returned {kind}; expected logits of shape [N, num_classes]. "
        "Wrap the model so that forward returns the logits tensor."
    )


def run_model(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """``model(image)`` as logits; an input too small for the model becomes an ``InputError`` saying so."""
    try:
        return logits_of(model(image))
    except RuntimeError as exc:
        too_small = explain_too_small(model, image)
        if too_small is None:
            raise
        raise InputError(too_small) from exc


@dataclass
class SeenLayer:
    """What one forward pass showed of a module with a 4-D or token output (its first call)."""

    type: str
    shape: tuple[int, ...]
    layout: Layout | None
    problem: str | None
    passthrough: bool
    calls: int = 1
    reaches_logits: bool = True
    enclosing: tuple[str, ...] = ()  # the modules taking tokens whose forward computed it, innermost last
    inner: bool = False  # tokens that are not the token stream (see _TokenModules.inner)
    taller: tuple[int, ...] | None = None  # a 4-D output's shape at a taller input (None: not probed)


@dataclass(frozen=True)
class ModelProbe:
    """The record of one model at one input shape (see the module docstring)."""

    layers: dict[str, SeenLayer]  # call order
    num_classes: int
    attention: bool  # scaled dot products or a softmax in the forward pass


_PROBES: weakref.WeakKeyDictionary[nn.Module, dict[tuple, ModelProbe]] = weakref.WeakKeyDictionary()


def _key(model: nn.Module, image: torch.Tensor) -> tuple | None:
    """None when the model cannot be fingerprinted: inference tensors keep no version counter."""
    tensors = (*model.parameters(), *model.buffers())
    if any(t.is_inference() for t in tensors):
        return None
    modules = tuple((name, id(m), type(m)) for name, m in model.named_modules())
    versions = tuple((id(t), t._version) for t in tensors)
    return tuple(image.shape), image.dtype, image.device, modules, versions


def cached_probe(model: nn.Module, image: torch.Tensor) -> ModelProbe | None:
    """The record of ``model`` at ``image``'s shape if it was probed already (and is unchanged), else None."""
    key = _key(model, image)
    return None if key is None else _PROBES.get(model, {}).get(key)


def probe(model: nn.Module, image: torch.Tensor) -> ModelProbe:
    """The record of ``model`` at ``image``'s shape: two forward passes the first time, none after.

    The model is run in eval mode without changing the caller's flags; errors (an input too
    small, a model that does not return logits) are raised every time, never recorded.
    """
    key = _key(model, image)  # before the run: a forward pass that changes the model's state probes again
    found = None if key is None else _PROBES.get(model, {}).get(key)
    if found is not None:
        return found
    with eval_state(model):
        spy = _AttentionSpy()
        with torch.enable_grad(), spy:
            seen, num_classes = _observe(model, image)
        taller = _taller_shapes(model, image, {n for n, s in seen.items() if len(s.shape) == 4})
    for name, shape in taller.items():
        seen[name].taller = shape
    record = ModelProbe(seen, num_classes, spy.seen)
    if key is not None:
        _PROBES.setdefault(model, {})[key] = record
    return record


class _AttentionSpy(TorchFunctionMode):
    """Notes whether a forward pass computes attention (scaled dot products or a softmax before the end)."""

    _OPS = {F.scaled_dot_product_attention, F.softmax, torch.softmax, torch.Tensor.softmax}

    def __init__(self) -> None:
        super().__init__()
        self.seen = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.seen = self.seen or func in self._OPS
        return func(*args, **(kwargs or {}))


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

    def inner(self, layer: SeenLayer) -> bool:
        """Tokens that are not the model's token stream: of another width than the innermost block
        computing them takes and gives (q/k/v, MLP hidden units), or computed inside a block that hands
        on only the class token (its k/v projections see the patches, its output does not)."""
        if not layer.enclosing or layer.enclosing[-1] not in self.widths:
            return False
        return layer.shape[-1] not in self.widths[layer.enclosing[-1]] or any(
            n in self.to_prefix for n in layer.enclosing
        )


class _Recorder:
    """The hooks of one observed forward pass: every named module's input kind on entry, its output on exit.

    Each module's input is classified as an image map, a token sequence or something
    else; a 4-D tensor computed inside a module that takes tokens (attention matrices
    ``[N, heads, T, T]``) or anything computed inside a module taking something else
    (windowed tokens) is never a map of the image, however square it looks. Each first
    output joins the autograd graph as a leaf (or a node), so that one backward from the
    logits tells which layers, and which patch tokens, reach them.
    """

    def __init__(self, model: nn.Module, image: torch.Tensor) -> None:
        self.size = (int(image.shape[2]), int(image.shape[3]))
        self.batch, self.channels = int(image.shape[0]), int(image.shape[1])
        self.names = {id(m): n for n, m in model.named_modules() if n}
        self.seen: dict[str, SeenLayer] = {}
        self.nodes: dict[str, torch.Tensor] = {}
        self.stack: list[tuple[str, str | None, str]] = []  # per active module: its input's kind, a description, name
        self.token_modules = _TokenModules()
        self.patch_grid: list[tuple[int, int]] = []  # h x w of the last image map seen: a ViT's patch grid
        # the kind of the last map seen: only a token sequence that follows tokens may be a pooled grid
        # (MViT, LeViT); after a 4-D map (Swin's channels-last stages) it may be one window
        self.last_kind: list[str] = []

    def grid_of(self, shape):
        pooled = bool(self.last_kind) and self.last_kind[-1] == "tokens"
        grid = self.patch_grid[-1] if self.patch_grid else None
        return classify(shape, self.size, self.batch, grid, pooled=pooled, image_channels=self.channels)

    def kind_of(self, tensor) -> tuple[str, str | None]:
        if not isinstance(tensor, torch.Tensor) or tensor.dim() not in (3, 4):
            return "unknown", None
        layout, _ = self.grid_of(tuple(tensor.shape))
        text = "x".join(map(str, tensor.shape[1:]))
        if layout is None:
            return "other", f"a {text} input that is not an image map"
        return ("tokens", f"{text} tokens") if layout.kind == "tokens" else ("map", None)

    def enter(self, module, inputs):
        kind, text = self.kind_of(inputs[0] if inputs else None)
        name = self.names[id(module)]
        self.stack.append((kind, f"{name!r} ({type(module).__name__}), which takes {text}" if text else None, name))
        if kind == "tokens":
            self.token_modules.enter(name, inputs[0])

    def leave(self, module, inputs, output):
        self.stack.pop()
        name = self.names[id(module)]
        self.token_modules.leave(name, output)
        if not isinstance(output, torch.Tensor) or output.dim() not in (3, 4):
            return None
        if name in self.seen:
            self.seen[name].calls += 1
            return None
        shape = tuple(output.shape)
        layout, problem = self.grid_of(shape)
        if output.dim() == 3 and layout is None:
            return None  # a 3-D tensor that is not the image's tokens is no candidate at all
        bad = ("tokens", "other") if output.dim() == 4 else ("other",)
        inside = next((f"it is computed inside {why}" for kind, why, _ in self.stack if kind in bad), None)
        if inside:
            layout, problem = None, inside
        if layout is NCHW:
            self.patch_grid.append(shape[2:])
        if layout is not None:
            self.last_kind.append(layout.kind)
        layer = SeenLayer(type(module).__name__, shape, layout, problem, any(output is i for i in inputs))
        layer.enclosing = tuple(n for kind, _, n in self.stack if kind == "tokens")
        self.seen[name] = layer
        # the first candidate becomes a leaf; later ones stay connected to it
        node = output if output.requires_grad else output.detach().requires_grad_(True)
        self.nodes[name] = node
        return node.clone()  # downstream in-place ops act on the clone


def _observe(model: nn.Module, image: torch.Tensor) -> tuple[dict[str, SeenLayer], int]:
    """Run ``model(image)``: every named module with a 4-D or token output in call order, and the class count."""
    rec = _Recorder(model, image)
    handles = []
    for module in model.modules():
        if id(module) in rec.names:
            handles.append(module.register_forward_pre_hook(rec.enter))
            handles.append(module.register_forward_hook(rec.leave))
    try:
        logits = run_model(model, image)
        if rec.seen:
            grads = torch.autograd.grad(logits.sum(), list(rec.nodes.values()), allow_unused=True)
            for layer, grad in zip(rec.seen.values(), grads, strict=True):
                _note_gradient(layer, grad)
    finally:
        for h in handles:
            h.remove()
    for layer in rec.seen.values():
        layer.inner = layer.layout is not None and layer.layout.kind == "tokens" and rec.token_modules.inner(layer)
    return rec.seen, int(logits.shape[-1])


def _note_gradient(layer: SeenLayer, grad: torch.Tensor | None) -> None:
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


def _taller_size(size: tuple[int, int]) -> tuple[int, int]:
    """A taller input than ``size`` (same width): only the height axis of a real map grows."""
    return size[0] + max(size[0] // 2, 1), size[1]


def _taller_shapes(model: nn.Module, example_input: torch.Tensor, wanted: set[str]) -> dict[str, tuple[int, ...]]:
    """Output shapes of the ``wanted`` layers at a taller input; empty if the model refuses that size."""
    shapes: dict[str, tuple[int, ...]] = {}
    if not wanted:
        return shapes
    handles = []
    for name, module in model.named_modules():
        if name in wanted:

            def hook(_m, _i, output, name=name):
                if isinstance(output, torch.Tensor) and name not in shapes:
                    shapes[name] = tuple(output.shape)

            handles.append(module.register_forward_hook(hook))
    size = _taller_size((int(example_input.shape[2]), int(example_input.shape[3])))
    taller = torch.zeros(1, example_input.shape[1], *size, dtype=example_input.dtype, device=example_input.device)
    try:
        with torch.no_grad():
            model(taller)
    except Exception:  # noqa: BLE001 - fixed-size models (ViT, Swin) refuse other sizes; then we cannot probe
        return {}
    finally:
        for h in handles:
            h.remove()
    return shapes
