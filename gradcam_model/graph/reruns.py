"""The extra forward passes some methods need: ``+aug-smooth``'s 6 augmented passes and
AblationCAM's rerun of the network above the target layer once per channel.

Both run in the traced function (:func:`gradcam_model.graph.capture.explain_function`) and in the
eager reference alike; :func:`is_cut` probes eagerly, before tracing, what a trace cannot
try and fail.
"""

from __future__ import annotations

import torch
from torch import nn

from .methods import postprocess
from .methods_extra import ablated_copies, augment, deaugment
from .probe import logits_of

__all__ = ["ablated_logits", "aug_smoothed", "is_cut", "method_input"]


def method_input(spec, image: torch.Tensor) -> torch.Tensor:
    """What the model runs on: the image, or its 6 augmented passes for ``METHOD+aug-smooth``."""
    return augment(image) if spec.method.aug_smooth else image


def aug_smoothed(maps: torch.Tensor, size, normalize: bool) -> torch.Tensor:
    """``+aug-smooth``'s ``[6N, K, h, w]`` maps -> ``[N, K, H, W]``: each pass's map upsampled to ``size``
    (None: as it is) and normalized, flipped back and averaged (pytorch-grad-cam's
    ``forward_augmentation_smoothing``), then normalized again if ``normalize``."""
    return postprocess(deaugment(postprocess(maps, size, True)), None, normalize)


def ablated_logits(model: nn.Module, layer: nn.Module, spec, batch: torch.Tensor, activations: torch.Tensor):
    """For AblationCAM, the ``[M, C, classes]`` logits with each of the layer's ``C`` channels ablated;
    None for other methods.

    One batch of ``M * C``: the layer's output replaced by its ablated copies. Where the layer
    is the only path from the image to the logits (``spec.ablation_cut``, probed eagerly by
    :func:`is_cut`), the layers below it run on the ``M`` inputs, and in the graph not at all
    (dead code); else each input is repeated ``C`` times, since something after the layer
    also reads what came before it (a residual connection around it).
    """
    if not getattr(spec.method, "ablates", False):
        return None
    c = activations.shape[1]
    if spec.ablation_cut is None:
        spec.ablation_cut = is_cut(model, layer, batch)
    copies = ablated_copies(activations.detach())
    handle = layer.register_forward_hook(lambda _module, _inputs, _output: copies)
    try:
        below = batch if spec.ablation_cut else batch[:, None].expand(-1, c, -1, -1, -1).flatten(0, 1)
        with torch.no_grad():
            logits = logits_of(model(below))
    finally:
        handle.remove()
    return logits.unflatten(0, (-1, c))


def is_cut(model: nn.Module, layer: nn.Module, image: torch.Tensor) -> bool:
    """Whether ``layer``'s output is all that reaches the logits: an eager run on 2 images whose
    layer output is replaced by 3 copies of itself must give 6 rows of logits and no error."""
    probe = image[:1].detach().expand(2, -1, -1, -1)
    handle = layer.register_forward_hook(lambda _module, _inputs, output: output.repeat(3, 1, 1, 1))
    try:
        with torch.no_grad():
            rows = logits_of(model(probe)).shape[0]
    except (RuntimeError, ValueError):  # a tensor from below the layer met the 6 rows (a residual join): not a cut
        return False
    finally:
        handle.remove()
    return rows == 6
