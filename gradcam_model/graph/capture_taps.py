"""Capture for the input-gradient methods: several taps and the image leaf, one ``autograd.grad`` for all.

The layer methods cut the graph at their target layer (its output becomes a detached
leaf). FullGrad and the guided methods need the gradient at the input too, so here no
layer's output is cut: each tapped output stays in the graph (the rest of the model gets
a clone, so in-place ops after it act on the clone) and ``autograd.grad`` is asked for
the tapped outputs and the image together. The guided gradient is a second
``autograd.grad`` of the same forward pass with :class:`~.methods_input.GuidedGates` on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import LayerError, MethodError
from .layouts import grid_problem
from .methods import postprocess
from .methods_extra import AUG_PASSES
from .methods_input import GuidedBackprop, GuidedGates, GuidedGradCAM, InputGradientMethod
from .probe import logits_of
from .reruns import aug_smoothed

__all__ = ["Taps", "check_target_output", "forward_with_taps", "input_gradient_outputs"]


@dataclass
class Taps:
    """One forward pass's tapped tensors: the image leaf, the method's layers' outputs, the guided gates."""

    image: torch.Tensor
    layers: list[nn.Module] = field(default_factory=list)
    outputs: list[torch.Tensor | None] = field(default_factory=list)  # None: the layer did not run
    gates: GuidedGates | None = None


def check_target_output(output, layer_name: str, image: torch.Tensor, reshape) -> None:
    """Refuse a target layer whose output is not one ``[N, C, h, w]`` map (after ``reshape``) on ``image``'s grid."""
    mapped = reshape(output) if reshape is not None and isinstance(output, torch.Tensor) else output
    if not isinstance(mapped, torch.Tensor) or mapped.dim() != 4:
        kind = type(mapped).__name__ if not isinstance(mapped, torch.Tensor) else f"{mapped.dim()}-D tensor"
        raise LayerError(
            f"layer {layer_name!r} gives a {kind}; a target layer must give one [N, C, h, w] map "
            "(channels-last and token layers are reshaped with reshape='auto'). Pick a layer from `gradcam layers`."
        )
    sizes = (*mapped.shape[1:], *image.shape[2:])
    if all(isinstance(s, int) for s in sizes):  # eager runs (symbolic sizes while tracing: checked before)
        problem = grid_problem(tuple(mapped.shape), tuple(image.shape[2:]))
        if problem is not None:
            raise LayerError(f"layer {layer_name!r} cannot be explained: {problem}.")


def forward_with_taps(model: nn.Module, layer: nn.Module | None, spec, image: torch.Tensor):
    """Run ``model(image)`` with the image a leaf and every tap in place: ``(logits, activations | None, Taps)``.

    ``activations`` is the target layer's output (guided Grad-CAM), None for methods without one.
    """

    method: InputGradientMethod = spec.method
    named = method.leaf_layers(model)
    seen: dict[int, list[torch.Tensor]] = {id(m): [] for m in [*(m for _, m in named), *([layer] if layer else [])]}

    def tap(module, _inputs, output):
        if module is layer:
            check_target_output(output, spec.layer_name, image, spec.reshape)
        seen[id(module)].append(output)
        return output.clone()  # in-place ops after the layer act on the clone, not on the tapped tensor

    leaf = image.detach().requires_grad_(True)
    taps = Taps(leaf, [m for _, m in named], gates=GuidedGates(model) if method.guided else None)
    modules = {id(m): m for m in [*taps.layers, *([layer] if layer else [])]}.values()
    with contextlib.ExitStack() as stack:
        for module in modules:
            stack.callback(module.register_forward_hook(tap).remove)
        if taps.gates is not None:  # registered after the taps: a tapped nn.ReLU output is the ReLU's own
            stack.enter_context(taps.gates.active())
        with torch.enable_grad():
            logits = logits_of(model(leaf))
    for name, module in [*named, *([(spec.layer_name, layer)] if layer else [])]:
        runs = len(seen[id(module)])
        if runs > 1 or (runs == 0 and module is layer):
            raise LayerError(
                f"layer {name!r} ran {runs} times in one forward pass; method {method.name!r} needs it to run "
                "exactly once (a module reused at several places is ambiguous)"
            )
    taps.outputs = [(seen[id(m)] or [None])[0] for m in taps.layers]
    if taps.gates is not None and taps.gates.calls == 0:
        raise MethodError(f"method {method.name!r} found no nn.ReLU module in the forward pass to guide; use 'gradcam'")
    return logits, (seen[id(layer)][0] if layer is not None else None), taps


def _gradients(output, wanted: Sequence[torch.Tensor], seed, retain: bool) -> list[torch.Tensor | None]:
    if not wanted:  # guided backprop: its one gradient is the guided one
        return []
    return list(torch.autograd.grad(output, list(wanted), seed, retain_graph=retain, allow_unused=True))


def _map_of(output, seed, activations, taps: Taps, spec, retain: bool):
    """One explained class's map ``[N, h, w]`` (before post-processing) and guided gradient ``[N, 3, H, W]`` or None."""
    method = spec.method
    present = [o for o in taps.outputs if o is not None]
    wanted = [*([activations] if method.uses_target_layer else []), *present, *([] if method.guided else [taps.image])]
    grads = _gradients(output, wanted, seed, retain or method.guided)
    cam = None
    if method.uses_target_layer:
        grad = grads.pop(0)
        if grad is None:
            raise LayerError(
                "the target layer has no gradient path to the logits (the logits do not depend on it); "
                "pick a layer on the path to the classifier, see `gradcam layers`."
            )
        a = activations.detach()
        a, grad = (spec.reshape(a), spec.reshape(grad)) if spec.reshape is not None else (a, grad)
        cam = method.gradcam(a, grad)
    if method.guided:
        with taps.gates.guided():
            (guided,) = _gradients(output, [taps.image], seed, retain)
        if guided is None:
            raise MethodError(f"the logits do not depend on the image; method {method.name!r} cannot explain them")
        return (method.guided_map(guided) if isinstance(method, GuidedBackprop) else cam), guided
    image_grad = grads.pop()
    if image_grad is None:
        raise MethodError(f"the logits do not depend on the image; method {method.name!r} cannot explain them")
    by_layer = iter(grads)
    layer_grads = [next(by_layer) if o is not None else None for o in taps.outputs]
    return method.input_map(taps.image.detach(), image_grad, taps.layers, layer_grads), None


def input_gradient_outputs(logits, probabilities, chosen, activations, taps: Taps, spec, head=None) -> tuple:
    """The contract's outputs for an input-gradient method, ``guided`` ``[N, K, 3, H, W]`` last for guided ones.

    ``head`` as in ``capture.cam_outputs``: the gradient of the logits starts at the Linear's input.
    """
    maps, guided = [], []
    k_total = chosen.shape[1]
    for k in range(k_total):
        if head is not None:
            output, seed = head[0], head[1].index_select(0, chosen[:, k])
        else:
            with torch.enable_grad():
                output, seed = logits.gather(1, chosen[:, k : k + 1]).sum(), None
        cam, gb = _map_of(output, seed, activations, taps, spec, retain=k + 1 < k_total)
        maps.append(torch.relu(cam))
        guided.append(gb)
    image = taps.image
    at_input = not spec.method.uses_target_layer  # FullGrad, guided backprop: maps at input resolution already
    size = None if at_input else image.shape[-2:]
    if spec.method.aug_smooth:  # FullGrad only (the guided methods refuse it): outputs of the image's own pass
        n = image.shape[0] // AUG_PASSES
        cam = aug_smoothed(torch.stack(maps, dim=1), size, spec.normalize)
        logits, probabilities, chosen = logits[:n], probabilities[:n], chosen[:n]
    else:
        cam = postprocess(torch.stack(maps, dim=1), size, spec.normalize)
    outputs = (logits.detach(), probabilities, chosen, probabilities.gather(1, chosen), cam)
    if not spec.method.guided:
        return outputs
    guided = torch.stack(guided, dim=1)  # [N, K, 3, H, W]
    if isinstance(spec.method, GuidedGradCAM):
        guided = cam[:, :, None] * guided
    return (*outputs, guided)
