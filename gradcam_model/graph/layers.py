"""Find target layers: list the candidates, resolve a dotted name, pick one automatically."""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..errors import LayerError, LayerNotFoundError, ModelTypeError
from .layouts import NCHW, Layout, axis_problem
from .probe import probe

__all__ = [
    "LayerInfo",
    "list_layers",
    "resolve_layer",
    "auto_layer",
    "select_layer",
    "describe_layer",
    "uses_attention",
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


def list_layers(model: nn.Module, example_input: torch.Tensor) -> list[LayerInfo]:
    """Candidate target layers: modules whose output is a 4-D map or a token sequence.

    Reads the model's probe at ``example_input``'s shape (:func:`~gradcam_model.graph.probe.probe`:
    one pass on it and one on a taller input, in eval mode without changing the caller's flags,
    the first time this model is seen at that shape), and reports each module's output shape
    in call order, how it covers the image (``layout``: ``[N, C, h, w]``, channels-last
    or tokens), whether its gradient reaches the logits, why it cannot be explained
    (``problem``), and which one ``target_layer="auto"`` picks: the last map on the
    path to the logits (for token layers: the last layer of the token stream whose patch
    tokens still reach the logits, which for ViT is the literature's last ``norm1``).
    """
    check_model(model)
    infos = []
    for name, layer in probe(model, example_input).layers.items():
        info = LayerInfo(name, layer.type, layer.shape, layer.reaches_logits, layer.calls, layout=layer.layout)
        problem = layer.problem
        if problem is None and layer.calls != 1:
            problem = (
                f"it ran {layer.calls} times in one forward pass (a module reused at several places); "
                "a target layer must run exactly once"
            )
        if problem is None and layer.taller is not None and layer.layout is not None and len(layer.shape) == 4:
            layout, problem = axis_problem(layer.layout, layer.shape, layer.taller)
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


def describe_layer(model: nn.Module, layer_name: str, example_input: torch.Tensor) -> LayerInfo | None:
    """The ``LayerInfo`` of one layer (None when its output is neither a 4-D map nor tokens)."""
    resolve_layer(model, layer_name)
    return next((info for info in list_layers(model, example_input) if info.name == layer_name), None)


def uses_attention(model: nn.Module, example_input: torch.Tensor) -> bool:
    """Whether ``model`` computes attention (ViT, Swin...), from its probe at batch 1."""
    return probe(model, example_input[:1]).attention


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
