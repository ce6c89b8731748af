"""RandomCAM, FinerCAM, AblationCAM and pytorch-grad-cam's ``aug_smooth``, in the graph.

Each follows pytorch-grad-cam 1.5.7 (``random_cam.py``, ``finer_cam.py``, ``ablation_cam.py`` with
``ablation_layer.py``, ``BaseCAM.forward_augmentation_smoothing``), our test oracle; where
pytorch-grad-cam is not deterministic (RandomCAM's global numpy RNG) the rule here is ours
and stated. They plug into :mod:`gradcam_model.graph.capture` through three optional hooks:
``score`` (the differentiated function of the logits), ``ablates`` (the capture runs the
network above the layer once per channel) and ``aug_smooth`` (the capture runs 6 augmented
passes). Pure torch: the constants (random weights, the identity) are built while tracing.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import MethodError
from .methods import AUG_SMOOTH, ChannelWeightedCAM, GradCAM, principal_projection, register

__all__ = [
    "AUG_SMOOTH",
    "AUG_PASSES",
    "ABLATION_CHANNEL_LIMIT",
    "RandomCAM",
    "FinerCAM",
    "AblationCAM",
    "augment",
    "deaugment",
    "ablated_copies",
]

# ttach's Compose([HorizontalFlip(), Multiply([0.9, 1, 1.1])]) as pytorch-grad-cam builds it:
# every (flip, factor) pair; ours in this order, so pass 0 is the image itself
_FACTORS = (1.0, 0.9, 1.1)
AUG_PASSES = 2 * len(_FACTORS)
# the ablated copies of one image hold C * C * h * w floats: 2048 channels (resnet50 layer4,
# 7x7 at 224 px) is 822 MB per image; above that one image's copies pass a gigabyte at 7x7
ABLATION_CHANNEL_LIMIT = 2048
_ABLATION_OFFSET = 1e7  # pytorch-grad-cam's ABLATION_VALUE, for layers whose minimum is not 0


def augment(image: torch.Tensor) -> torch.Tensor:
    """``[N, 3, H, W]`` -> ``[6N, 3, H, W]``, pass-major: the image times 1, 0.9, 1.1, then flipped likewise."""
    flipped = image.flip(-1)
    return torch.cat([x if f == 1.0 else x * f for x in (image, flipped) for f in _FACTORS])


def deaugment(maps: torch.Tensor) -> torch.Tensor:
    """``[6N, K, h, w]`` maps of :func:`augment`'s passes -> ``[N, K, h, w]``: the flipped ones
    flipped back (ttach's ``deaugment_mask``), then the mean of the 6."""
    passes = maps.unflatten(0, (2, len(_FACTORS), -1))
    return (passes[0].sum(0) + passes[1].flip(-1).sum(0)) / AUG_PASSES


class RandomCAM(ChannelWeightedCAM):
    """RandomCAM, a baseline: ``w_k`` uniform in (-1, 1), ``cam = ReLU(sum_k w_k A_k)``.

    pytorch-grad-cam draws new weights per image and call from numpy's global RNG; ours are
    one fixed vector, ``numpy.random.default_rng(seed).uniform(-1, 1, C)``, the same for
    every image and class, so an artifact is deterministic. The seed is part of the name
    (``randomcam`` is seed 0, ``randomcam+seed-7`` seed 7), hence of the artifact's metadata.
    """

    name = "randomcam"
    uses_gradients = False
    seeded = True  # the name may end in +seed-N

    def __init__(self, *, seed: int = 0, eigen_smooth: bool = False) -> None:
        super().__init__(eigen_smooth=eigen_smooth)
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise MethodError(f"randomcam's seed must be a non-negative int, got {seed!r}")
        self.seed = seed
        self.name = self.name.replace("randomcam", "randomcam" if seed == 0 else f"randomcam+seed-{seed}", 1)

    def channel_weights(self, channels: int) -> np.ndarray:
        """The ``[C]`` weights of this seed (the first ``C`` draws of its stream, whatever ``C``)."""
        return np.random.default_rng(self.seed).uniform(-1.0, 1.0, channels)

    def weights(self, activations, gradients):
        channels = activations.shape[1]  # static in every graph we trace
        w = torch.tensor(self.channel_weights(int(channels)), dtype=activations.dtype, device=activations.device)
        return w.expand(activations.shape[0], -1)


class FinerCAM(GradCAM):
    """FinerCAM (Zhang et al. 2025): Grad-CAM of ``s = sum_j p_j (y_c - alpha y_j) / (sum_j p_j + 1e-9)``.

    ``j`` runs over the 3 classes other than ``c`` whose logits are closest to ``y_c``
    (fewer when the model has fewer), ``p = softmax(y)`` and ``alpha = 1``; the whole of
    ``s``, softmax included, is differentiated (pytorch-grad-cam's ``FinerCAM`` with
    ``FinerWeightedTarget`` and its defaults: for the top class the comparison classes are
    ranks 2 to 4).
    """

    name = "finercam"
    no_aug_smooth = "pytorch-grad-cam's FinerCAM has no aug_smooth"
    comparisons = 3
    alpha = 1.0
    eps = 1e-9  # pytorch-grad-cam's value

    def score(self, logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """``[N, C]`` logits (differentiable) and ``[N]`` classes -> the ``[N]`` scores to differentiate."""
        yc = logits.gather(1, classes[:, None])
        distance = (logits.detach() - yc.detach()).abs().scatter(1, classes[:, None], float("inf"))
        nearest = distance.topk(min(self.comparisons, logits.shape[1] - 1), dim=1, largest=False).indices
        p = torch.softmax(logits, dim=1).gather(1, nearest)
        return (p * (yc - self.alpha * logits.gather(1, nearest))).sum(1) / (p.sum(1) + self.eps)

    def check_applies(self, *, num_classes: int, **_layer) -> None:
        if num_classes < 2:
            raise MethodError("method 'finercam' compares the class with others; this model has 1 class")


class AblationCAM(ChannelWeightedCAM):
    """AblationCAM (Desai & Ramaswamy 2020): ``w_k = (y_c - y_c^(k)) / y_c``, ``cam = ReLU(sum_k w_k A_k)``.

    ``y_c^(k)`` is the logit with channel ``k`` of the layer's output ablated: set to 0 where
    the image's activations have minimum 0 (after a ReLU), else to that minimum - 1e7
    (pytorch-grad-cam's ``AblationLayer``). No gradient: the capture runs the network above
    the layer once per channel, as one batch of ``N * C`` (see :func:`ablated_copies`).
    pytorch-grad-cam's default ``batch_size=32`` lowers that value by another 1e7 for each
    channel before it in its batch (its loop keeps ablating in place and re-reads the
    minimum); ours is its ``batch_size=1`` result, the rule as it states it.
    """

    name = "ablationcam"
    uses_gradients = False
    ablates = True

    def weights(self, activations, gradients):
        raise MethodError("ablationcam's weights come from the ablated logits, not from gradients")

    def ablation_saliency(self, activations, logits, ablated, classes) -> torch.Tensor:
        """``[N, h, w]`` saliency (before the ReLU) from ``[N, C]`` logits, ``[N, C_layer, C]`` ablated
        logits and ``[N]`` classes."""
        yc = logits.gather(1, classes[:, None])
        yk = ablated.gather(2, classes[:, None, None].expand(-1, ablated.shape[1], 1))[..., 0]
        x = ((yc - yk) / yc)[:, :, None, None] * activations
        return principal_projection(x) if self.eigen_smooth else x.sum(1)

    def check_applies(self, *, layer_name: str, output_shape, layout, **_other) -> None:
        if layout is not None:
            raise MethodError(
                f"method 'ablationcam' ablates channels of an [N, C, h, w] output; layer {layer_name!r} is not laid "
                "out so (tokens, channels-last): pick a convolutional layer"
            )
        channels = int(output_shape[1])
        if channels > ABLATION_CHANNEL_LIMIT:
            raise MethodError(
                f"method 'ablationcam' runs the network above layer {layer_name!r} once per channel, {channels} "
                f"times per image, on C x C x h x w copies of its output; the limit is {ABLATION_CHANNEL_LIMIT} "
                "channels: pick an earlier layer or another method"
            )


def ablated_copies(activations: torch.Tensor) -> torch.Tensor:
    """``[M, C, h, w]`` -> ``[M * C, C, h, w]``: copy ``(m, k)`` is image ``m`` with channel ``k`` ablated."""
    c = activations.shape[1]
    lo = activations.amin((1, 2, 3))
    value = torch.where(lo == 0, torch.zeros_like(lo), lo - _ABLATION_OFFSET)[:, None, None, None, None]
    eye = torch.eye(c, dtype=activations.dtype, device=activations.device)[None, :, :, None, None]
    return (activations[:, None] * (1 - eye) + value * eye).flatten(0, 1)


register(RandomCAM, FinerCAM, AblationCAM)
