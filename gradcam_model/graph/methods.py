"""CAM methods: each one turns activations ``A`` and gradients ``G = dy^c/dA`` into a map.

The base class owns everything shared (ReLU, upsampling, normalization); a method
implements only its weights (or, for the element-wise methods, its saliency).
All of it is pure torch so it can be traced into the exported graph.
Formulas follow Selvaraju et al. and match pytorch-grad-cam, our test oracle.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import ClassVar

import torch

from ..errors import MethodError

__all__ = [
    "CAMMethod",
    "ChannelWeightedCAM",
    "WeightedActivationsCAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "XGradCAM",
    "HiResCAM",
    "LayerCAM",
    "GradCAMElementWise",
    "CAM",
    "EigenCAM",
    "EigenGradCAM",
    "METHODS",
    "get_method",
    "postprocess",
]

_SPATIAL = (2, 3)
# Squarings of the Gram matrix in principal_projection: 2**16 power iterations' worth, so the
# leading direction wins by (lambda2 / lambda1) ** 65536 (below float32's resolution unless
# the two leading eigenvalues are within ~1e-3 of each other, where LAPACK's own choice
# between them is as arbitrary); 16 small matmuls, the smaller side of [h*w, C] squared.
_SQUARINGS = 16
EIGEN_SMOOTH = "+eigen-smooth"  # a method name with this suffix: its map is the first principal component
AUG_SMOOTH = "+aug-smooth"  # a method name with this suffix: the mean map of 6 augmented passes (methods_extra)


class CAMMethod(ABC):
    """Base of every method: ``cam = ReLU(saliency(A, G))`` at feature resolution."""

    name: ClassVar[str]
    uses_gradients: ClassVar[bool] = True  # False: the map needs no backward pass (EigenCAM)
    aug_smooth: bool = False  # True: the map is the mean of 6 augmented passes (methods_extra.augment)

    @abstractmethod
    def saliency(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """Map ``[N, C, h, w]`` activations and gradients to a ``[N, h, w]`` map (before ReLU)."""

    def __call__(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.saliency(activations, gradients))


class WeightedActivationsCAM(CAMMethod):
    """``cam = ReLU(sum_k X_k)`` of weighted activations ``X`` ``[N, C, h, w]``; with ``eigen_smooth``,
    ``ReLU`` of ``X``'s first principal component instead (pytorch-grad-cam's ``eigen_smooth``)."""

    def __init__(self, *, eigen_smooth: bool = False) -> None:
        self.eigen_smooth = eigen_smooth
        if eigen_smooth:
            self.name = f"{type(self).name}{EIGEN_SMOOTH}"

    @abstractmethod
    def weighted_activations(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """Return the ``[N, C, h, w]`` terms whose channel sum is the map."""

    def saliency(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        x = self.weighted_activations(activations, gradients)
        return principal_projection(x) if self.eigen_smooth else x.sum(1)


class ChannelWeightedCAM(WeightedActivationsCAM):
    """``cam = ReLU(sum_k w_k A_k)``; subclasses define the channel weights ``w``."""

    @abstractmethod
    def weights(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """Return ``[N, C]`` channel weights."""

    def weighted_activations(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return self.weights(activations, gradients)[:, :, None, None] * activations


class GradCAM(ChannelWeightedCAM):
    """Grad-CAM: ``w_k = mean_ij G_k``."""

    name = "gradcam"

    def weights(self, activations, gradients):
        return gradients.mean(_SPATIAL)


class GradCAMPlusPlus(ChannelWeightedCAM):
    """Grad-CAM++: ``alpha = G^2 / (2 G^2 + sum_ij(A_k) G^3 + eps)`` (0 where G = 0);
    ``w_k = sum_ij alpha ReLU(G_k)``."""

    name = "gradcam++"
    eps = 1e-6  # pytorch-grad-cam's value; guards 0/0 where G and sum(A) vanish

    def weights(self, activations, gradients):
        g2 = gradients * gradients
        g3 = g2 * gradients
        sum_a = activations.sum(_SPATIAL, keepdim=True)
        alpha = g2 / (2 * g2 + sum_a * g3 + self.eps)
        alpha = torch.where(gradients != 0, alpha, torch.zeros_like(alpha))
        return (alpha * torch.relu(gradients)).sum(_SPATIAL)


class XGradCAM(ChannelWeightedCAM):
    """XGrad-CAM: ``w_k = sum_ij(G_k A_k) / (sum_ij A_k + eps)``."""

    name = "xgradcam"
    eps = 1e-7  # pytorch-grad-cam's value

    def weights(self, activations, gradients):
        sum_a = activations.sum(_SPATIAL)
        return (gradients * activations).sum(_SPATIAL) / (sum_a + self.eps)


class HiResCAM(WeightedActivationsCAM):
    """HiResCAM: ``cam = ReLU(sum_k G_k * A_k)``."""

    name = "hirescam"

    def weighted_activations(self, activations, gradients):
        return gradients * activations


class LayerCAM(WeightedActivationsCAM):
    """Layer-CAM: ``cam = ReLU(sum_k ReLU(G_k) * A_k)``."""

    name = "layercam"

    def weighted_activations(self, activations, gradients):
        return torch.relu(gradients) * activations


class GradCAMElementWise(WeightedActivationsCAM):
    """Element-wise Grad-CAM: ``cam = ReLU(sum_k ReLU(G_k * A_k))``."""

    name = "gradcam-elementwise"

    def weighted_activations(self, activations, gradients):
        return torch.relu(gradients * activations)


class CAM(ChannelWeightedCAM):
    """CAM (Zhou et al. 2016): ``w_k = W[c, k]`` of a global-average-pool + Linear head.

    For such a head ``dy^c/dA_k(i, j) = W[c, k] / (h w)`` at every position, so
    ``w_k = sum_ij G_k`` equals ``W[c, k]`` exactly. The builder checks that the
    target layer really feeds such a head and refuses the method otherwise.
    """

    name = "cam"
    requires_gap_linear_head = True

    def weights(self, activations, gradients):
        return gradients.sum(_SPATIAL)


def _hint(size) -> int:
    """A size as a plain int: a symbolic one (dynamic height or width) by its example value, with no guard."""
    return size if isinstance(size, int) else int(size.node.hint)


def principal_projection(x: torch.Tensor) -> torch.Tensor:
    """``[N, C, h, w]`` -> ``[N, h, w]``: each position projected on the first principal component.

    pytorch-grad-cam's ``get_2d_projection`` (EigenCAM) centres the ``[h*w, C]`` matrix ``X``
    per channel and projects it on the first right singular vector ``v``: ``X v``. ONNX has
    no SVD, so ``v`` comes from the Gram matrix of the smaller side (``X X^T`` or ``X^T X``)
    raised to the power ``2 ** _SQUARINGS`` by repeated squaring (rescaled each time),
    which leaves ``e e^T`` of its leading eigenvector ``e``; its column through the largest
    diagonal entry is ``e`` up to a factor. The sign of a singular vector is arbitrary
    (LAPACK's choice, in pytorch-grad-cam): ours is pytorch-grad-cam's
    ``get_2d_projection_with_sign_correction`` (Seg-Eigen-CAM, Chung & Ying 2025, Eq. 13):
    the projection is negated when its minimum is larger in magnitude than its maximum.
    """
    n, c, h, w = x.shape
    centred = x.flatten(2)
    centred = centred - centred.mean(2, keepdim=True)  # [N, C, hw], each channel centred over positions
    spatial = _hint(h) * _hint(w) <= _hint(c)  # which Gram matrix is smaller, decided once per graph
    gram = centred.transpose(1, 2) @ centred if spatial else centred @ centred.transpose(1, 2)
    for _ in range(_SQUARINGS):
        gram = gram / gram.abs().amax((1, 2), keepdim=True).clamp_min(torch.finfo(gram.dtype).tiny)
        gram = gram @ gram
    pick = gram.diagonal(dim1=1, dim2=2).argmax(1)[:, None, None].expand(-1, gram.shape[1], 1)
    e = torch.gather(gram, 2, pick)  # [N, m, 1]
    v = centred @ e if spatial else e  # [N, C, 1]: the right singular vector, up to a factor
    v = v / v.square().sum(1, keepdim=True).sqrt().clamp_min(torch.finfo(v.dtype).tiny)
    projection = (v * centred).sum(1)  # [N, hw]
    flip = projection.amin(1, keepdim=True).abs() > projection.amax(1, keepdim=True).abs()
    return torch.where(flip, -projection, projection).reshape(n, h, w)


class EigenCAM(CAMMethod):
    """EigenCAM (Muhammad & Yeasin 2020): the activations' first principal component; no gradient."""

    name = "eigencam"
    uses_gradients = False

    def saliency(self, activations, gradients):
        return principal_projection(activations)


class EigenGradCAM(CAMMethod):
    """EigenGradCAM: the first principal component of ``G * A`` (pytorch-grad-cam's definition)."""

    name = "eigengradcam"

    def saliency(self, activations, gradients):
        return principal_projection(gradients * activations)


METHODS: dict[str, type[CAMMethod]] = {
    cls.name: cls
    for cls in (GradCAM, GradCAMPlusPlus, XGradCAM, HiResCAM, LayerCAM, GradCAMElementWise, CAM, EigenCAM, EigenGradCAM)
}


def register(*classes: type[CAMMethod]) -> None:
    """Add methods to :data:`METHODS` by their names (``methods_extra`` registers its own on import)."""
    METHODS.update({cls.name: cls for cls in classes})


from . import methods_extra  # noqa: E402, F401 (it subclasses the classes above and registers them)

_OPTIONS = re.compile(r"(\+seed-\d+|\+eigen-smooth|\+aug-smooth)$")


def get_method(method: str | CAMMethod) -> CAMMethod:
    """Resolve a method name (case-insensitive; ``_`` and ``-`` alike) or pass an instance through.

    A name may end in options, in any order: ``+eigen-smooth`` (``gradcam+eigen-smooth``)
    smooths the map as pytorch-grad-cam's ``eigen_smooth=True`` does (the eigen methods are
    projections already); ``+aug-smooth`` averages 6 augmented passes as its
    ``aug_smooth=True`` does; ``+seed-N`` picks RandomCAM's weights.
    """
    if isinstance(method, CAMMethod):
        return method
    if not isinstance(method, str):
        raise MethodError(f"method must be a name or a CAMMethod, got {type(method).__name__}")
    base, options = method.strip().lower().replace("_", "-"), set()
    while match := _OPTIONS.search(base):
        options.add(match.group(1))
        base = base[: match.start()]
    base = {"gradcampp": "gradcam++", "gradcam-plusplus": "gradcam++", "grad-cam": "gradcam"}.get(base, base)
    if base not in METHODS:
        raise MethodError(f"unknown method {method!r}; expected one of: {', '.join(METHODS)} (each may end in "
                          f"{EIGEN_SMOOTH!r}, except the eigen methods, and in {AUG_SMOOTH!r})")  # fmt: skip
    cls, kwargs = METHODS[base], {}
    if EIGEN_SMOOTH in options:
        if not (issubclass(cls, WeightedActivationsCAM) or getattr(cls, "eigen_smoothable", False)):
            raise MethodError(f"{base!r} takes no {EIGEN_SMOOTH!r}: its map is not a sum over channels to smooth")
        kwargs["eigen_smooth"] = True
    seeds = [o for o in options if o.startswith("+seed-")]
    if seeds:
        if len(seeds) > 1 or not getattr(cls, "seeded", False):
            raise MethodError(f"{method!r}: only 'randomcam' takes a seed, and one")
        kwargs["seed"] = int(seeds[0].removeprefix("+seed-"))
    instance = cls(**kwargs)
    if AUG_SMOOTH in options:
        if getattr(cls, "no_aug_smooth", None):
            raise MethodError(f"{base!r} takes no {AUG_SMOOTH!r}: {cls.no_aug_smooth}")
        instance.aug_smooth = True
        instance.name = f"{instance.name}{AUG_SMOOTH}"
    return instance


def postprocess(cam: torch.Tensor, size: tuple[int, int] | torch.Size | None, normalize: bool) -> torch.Tensor:
    """Upsample ``[N, K, h, w]`` maps bilinearly to ``size`` and min-max normalize each map.

    Normalization is ``(cam - min) / (max - min)`` where ``max > min`` and zeros
    elsewhere: no additive eps, which would distort faint maps (only spans below the
    smallest normal float, ~1e-38, are rounded up to it).
    """
    if size is not None:
        # the explicit op, not F.interpolate, whose composite form is index arithmetic
        # with device-bound aranges; and below autograd, because torch registers a Python
        # decomposition of this op at the Autograd key that make_fx would trace into
        # gathers (the maps are never differentiated). capture._finalize keeps it one
        # op through torch.onnx, which exports it as a single Resize.
        with torch._C._AutoDispatchBelowAutograd():
            cam = torch.ops.aten.upsample_bilinear2d.default(cam, list(size), False)
    if normalize:
        lo = cam.amin(dim=_SPATIAL, keepdim=True)
        hi = cam.amax(dim=_SPATIAL, keepdim=True)
        # a flat map has cam - lo == 0 everywhere, so clamping its zero span to the
        # smallest normal float gives exact zeros with no select over the full maps
        cam = (cam - lo) / (hi - lo).clamp_min(torch.finfo(cam.dtype).tiny)
    return cam


# the input-gradient methods subclass CAMMethod and use postprocess: they register themselves once both exist
from . import methods_input  # noqa: E402, F401
