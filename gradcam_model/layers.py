"""Find target layers: list the candidates, resolve a dotted name, pick one automatically."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch
from torch import nn

from .errors import LayerError, LayerNotFoundError, ModelOutputError

__all__ = ["LayerInfo", "list_layers", "resolve_layer", "auto_layer"]


@dataclass(frozen=True)
class LayerInfo:
    """One candidate target layer."""

    name: str
    type: str
    output_shape: tuple[int, ...]
    influences_logits: bool
    calls: int = 1
    auto: bool = False


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


def list_layers(model: nn.Module, example_input: torch.Tensor) -> list[LayerInfo]:
    """Candidate target layers: modules whose output is a 4-D ``[N, C, h, w]`` tensor.

    Runs the model once on ``example_input`` (in eval mode, without changing the
    caller's flags) and reports each module's output shape, in call order, whether
    it has a gradient path to the logits, and which one ``target_layer="auto"`` picks:
    the last such layer on the path to the logits.
    """
    from ._state import eval_state  # local: avoids an import cycle

    names = {id(m): n for n, m in model.named_modules() if n}
    seen: dict[str, tuple[str, tuple[int, ...], torch.Tensor]] = {}
    calls: dict[str, int] = {}
    handles = []

    def hook(module, _inputs, output):
        name = names.get(id(module))
        if name is None or not isinstance(output, torch.Tensor) or output.dim() != 4:
            return None
        calls[name] = calls.get(name, 0) + 1
        if name in seen:
            return None
        # the first candidate becomes a leaf; later ones stay connected to it, so one
        # backward tells which layers reach the logits
        node = output if output.requires_grad else output.detach().requires_grad_(True)
        seen[name] = (type(module).__name__, tuple(output.shape), node)
        return node.clone()  # downstream in-place ops act on the clone

    with eval_state(model):
        for module in model.modules():
            if id(module) in names:
                handles.append(module.register_forward_hook(hook))
        try:
            with torch.enable_grad():
                logits = _logits_of(model(example_input))
                leaves = [v[2] for v in seen.values()]
                grads = torch.autograd.grad(logits.sum(), leaves, allow_unused=True) if leaves else []
        finally:
            for h in handles:
                h.remove()
    infos = [
        LayerInfo(name, kind, shape, grad is not None, calls[name])
        for (name, (kind, shape, _)), grad in zip(seen.items(), grads, strict=True)
    ]
    # auto: the last layer on the path to the logits with a real spatial map, called once,
    # that is not the head's adaptive pooling (VGG's avgpool only resamples `features`)
    eligible = [
        i
        for i, info in enumerate(infos)
        if info.influences_logits
        and info.calls == 1
        and info.output_shape[2] * info.output_shape[3] > 1
        and not info.type.startswith("Adaptive")
    ]
    if eligible:
        pick = infos[eligible[-1]]
        infos[eligible[-1]] = LayerInfo(pick.name, pick.type, pick.output_shape, True, pick.calls, auto=True)
    return infos


def auto_layer(model: nn.Module, example_input: torch.Tensor) -> str:
    """The layer ``target_layer="auto"`` picks: the last 4-D output on the path to the logits."""
    for info in list_layers(model, example_input):
        if info.auto:
            return info.name
    raise LayerError(
        "no layer of the model produces a 4-D [N, C, h, w] output with h*w > 1 on the path to the logits; "
        "use a larger example input or pass target_layer explicitly."
    )
