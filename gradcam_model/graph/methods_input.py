"""Methods that need the gradient at the input image: FullGrad, guided backpropagation, guided Grad-CAM.

Their maps are at input resolution. The capture (``capture.py``) makes the image a leaf,
keeps the layers' outputs in the graph (no cut at the target layer) and asks one
``autograd.grad`` for every tensor a method lists; the guided rule is a backward of ours
(:class:`GuidedGates`), traced like any other. Formulas follow pytorch-grad-cam 1.5.7,
the test oracle (``fullgrad_cam.py``, ``guided_backprop.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import ClassVar

import torch
from torch import nn

from ..errors import MethodError
from .methods import EIGEN_SMOOTH, CAMMethod, GradCAM, postprocess, principal_projection, register

__all__ = [
    "InputGradientMethod",
    "FullGrad",
    "GuidedBackprop",
    "GuidedGradCAM",
    "GuidedGates",
    "bias_layers",
]

_SPATIAL = (2, 3)
# pytorch-grad-cam's GuidedBackpropReLUModel is no BaseCAM: it has neither smoothing
_NO_AUG_SMOOTH = "pytorch-grad-cam's GuidedBackpropReLUModel has no aug_smooth"


class InputGradientMethod(CAMMethod):
    """A method whose map needs ``dy^c/dx`` at the input image ``x``, at input resolution."""

    uses_target_layer: ClassVar[bool] = False  # True: also the target layer's (A, G), for a Grad-CAM map
    guided: ClassVar[bool] = False  # True: the input gradient crosses nn.ReLU modules by the guided rule

    def check_model(self, model: nn.Module) -> None:
        """Raise ``MethodError`` (one line, with the reason) when the method does not apply to ``model``."""

    def leaf_layers(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """Layers whose output gradients the map needs besides the input's (FullGrad: the bias layers)."""
        return []

    def saliency(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        raise MethodError(f"method {self.name!r} needs the input gradient; it has no saliency(A, G) of one layer")


class FullGrad(InputGradientMethod):
    """FullGrad (Srinivas & Fleuret 2019), as pytorch-grad-cam computes it:
    ``map = sum_c s(|dy/dx_c * x_c|) + sum_l up(sum_c s(|b_lc * dy/dz_lc|))``
    over every ``Conv2d``/``BatchNorm2d`` ``l`` with a bias (BatchNorm's effective bias
    ``beta - mu gamma / sqrt(var + eps)``), ``z_l`` its output, ``s`` a per-map
    ``(m - min) / (max - min + 1e-7)`` and ``up`` bilinear upsampling to the input size.
    It reads no target layer.

    With ``eigen_smooth`` (pytorch-grad-cam's ``FullGrad`` with ``eigen_smooth=True``) the
    ``3 + L`` terms of that sum (the 3 input channels, one map per layer) are each scaled by
    ``s`` and downsampled bilinearly to ``(H // 8, W // 8)``; the map is ``up(s(p))``, ``p``
    their first principal component (:func:`~.methods.principal_projection`, whose sign
    rule is ours: with LAPACK's sign, pytorch-grad-cam's map is ours or ``1 - ours``, image by image).
    """

    name = "fullgrad"
    eps = 1e-7  # pytorch-grad-cam's scale_cam_image: a layer's flat maps become zeros
    eigen_smoothable = True  # its map is a sum of terms (get_method takes +eigen-smooth)
    eigen_shrink = 8  # pytorch-grad-cam's: the terms are projected at 1/8 of the input size

    def __init__(self, *, eigen_smooth: bool = False) -> None:
        self.eigen_smooth = eigen_smooth
        if eigen_smooth:
            self.name = f"{type(self).name}{EIGEN_SMOOTH}"

    def check_model(self, model):
        layers = bias_layers(model)
        if not layers:
            raise MethodError(
                "method 'fullgrad' needs Conv2d or BatchNorm2d layers with a bias, and this model has none; "
                "use a gradient method with a target layer (gradcam)"
            )
        stateless = [name for name, m in layers if isinstance(m, nn.BatchNorm2d) and m.running_mean is None]
        if stateless:
            raise MethodError(
                f"method 'fullgrad' needs BatchNorm running statistics for the effective bias, and "
                f"{stateless[0]!r} has none (track_running_stats=False); use another method"
            )

    def leaf_layers(self, model):
        return bias_layers(model)

    def input_map(
        self, image: torch.Tensor, image_grad: torch.Tensor, layers: Sequence[nn.Module], grads: Sequence
    ) -> torch.Tensor:
        """The ``[N, H, W]`` map from the input gradient and each layer's output gradient (None: no path)."""
        terms = [self._scale((image_grad * image).abs())]
        for layer, grad in zip(layers, grads, strict=True):
            if grad is None:  # the layer ran but does not reach the logits: pytorch-grad-cam's map of zeros
                continue
            saliency = self._scale((_effective_bias(layer)[None, :, None, None] * grad).abs()).sum(1, keepdim=True)
            terms.append(postprocess(saliency, image.shape[-2:], normalize=False))
        if not self.eigen_smooth:
            return torch.cat(terms, 1).sum(1)  # pytorch-grad-cam's concatenate-then-sum
        # a flat term (zeros: no path) is constant after centring, so leaving it out changes no projection
        size = image.shape[-2:]
        small = [size[0] // self.eigen_shrink, size[1] // self.eigen_shrink]
        if any(isinstance(s, int) and s < 1 for s in small):
            raise MethodError(
                f"method {self.name!r} projects its terms at 1/{self.eigen_shrink} of the input size; "
                f"{size[0]}x{size[1]} is too small (at least {self.eigen_shrink}x{self.eigen_shrink})"
            )
        stacked = postprocess(self._scale(torch.cat(terms, 1)), small, normalize=False)
        projection = self._scale(principal_projection(stacked)[:, None])
        return postprocess(projection, size, normalize=False)[:, 0]

    def _scale(self, maps: torch.Tensor) -> torch.Tensor:
        lo = maps.amin(_SPATIAL, keepdim=True)
        return (maps - lo) / (maps.amax(_SPATIAL, keepdim=True) - lo + self.eps)


class GuidedBackprop(InputGradientMethod):
    """Guided backpropagation (Springenberg et al. 2015): ``dy^c/dx`` with every ``nn.ReLU``'s
    backward ``g * (x > 0) * (g > 0)`` (pytorch-grad-cam's ``GuidedBackpropReLUModel``).

    The ``guided`` output is that gradient ``[N, K, 3, H, W]``; the ``cam`` output is its
    saliency ``max_c |guided_c|`` (Simonyan et al.'s rule), normalized like every map.
    It reads no target layer.
    """

    name = "guided-backprop"
    guided = True
    no_aug_smooth = _NO_AUG_SMOOTH

    def check_model(self, model):
        _check_relus(model, self.name)

    def guided_map(self, guided: torch.Tensor) -> torch.Tensor:
        """The ``[N, H, W]`` map of a ``[N, 3, H, W]`` guided gradient."""
        return guided.abs().amax(1)


class GuidedGradCAM(InputGradientMethod):
    """Guided Grad-CAM (Selvaraju et al. 2017): ``guided = cam * guided backprop`` per pixel,
    ``cam`` the Grad-CAM map of the target layer at input resolution (pytorch-grad-cam's
    example ``cam_mask * gb``); the ``cam`` output is that Grad-CAM map."""

    name = "guided-gradcam"
    uses_target_layer = True
    guided = True
    no_aug_smooth = _NO_AUG_SMOOTH

    def __init__(self) -> None:
        self.gradcam = GradCAM()

    def check_model(self, model):
        _check_relus(model, self.name)


def bias_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """FullGrad's layers: ``Conv2d`` and ``BatchNorm2d`` (exactly these types, as pytorch-grad-cam
    picks them: a subclass such as timm's ``BatchNormAct2d`` also applies its activation) with a bias."""
    return [
        (name, m) for name, m in model.named_modules() if type(m) in (nn.Conv2d, nn.BatchNorm2d) and m.bias is not None
    ]


def _effective_bias(layer: nn.Module) -> torch.Tensor:
    if isinstance(layer, nn.BatchNorm2d):  # the official implementation's, which pytorch-grad-cam borrows
        return layer.bias - layer.running_mean * layer.weight / torch.sqrt(layer.running_var + layer.eps)
    return layer.bias


def _check_relus(model: nn.Module, method: str) -> None:
    if not any(isinstance(m, nn.ReLU) for m in model.modules()):
        raise MethodError(
            f"method {method!r} applies the guided rule to nn.ReLU modules, and this model has none "
            "(functional or other activations are not guided); use 'gradcam'"
        )


class _GuidedGate(torch.autograd.Function):
    """Identity on a ReLU's output ``y`` whose backward is the guided rule when ``switch.on``,
    else the identity (the ReLU's own backward follows either way; ``y > 0`` iff ``x > 0``)."""

    @staticmethod
    def forward(ctx, output: torch.Tensor, switch: GuidedGates) -> torch.Tensor:
        ctx.save_for_backward(output)
        ctx.switch = switch
        return output.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if not ctx.switch.on:
            return grad, None
        (output,) = ctx.saved_tensors
        return grad * ((output > 0) & (grad > 0)).to(grad.dtype), None


class GuidedGates:
    """While active, every ``nn.ReLU`` module's output passes a gate whose backward is guided inside
    :meth:`guided` and plain outside it: one forward pass serves both gradients of guided Grad-CAM."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.on = False
        self.calls = 0

    def _hook(self, _module, _inputs, output):
        self.calls += 1
        return _GuidedGate.apply(output, self)

    @contextlib.contextmanager
    def active(self) -> Iterator[GuidedGates]:
        handles = [m.register_forward_hook(self._hook) for m in self.model.modules() if isinstance(m, nn.ReLU)]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    @contextlib.contextmanager
    def guided(self) -> Iterator[None]:
        self.on = True
        try:
            yield
        finally:
            self.on = False


register(FullGrad, GuidedBackprop, GuidedGradCAM)
