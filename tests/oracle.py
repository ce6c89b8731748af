"""pytorch-grad-cam as an independent oracle."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytorch_grad_cam as pgc
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection_with_sign_correction

ORACLE = {
    "gradcam": pgc.GradCAM,
    "gradcam++": pgc.GradCAMPlusPlus,
    "xgradcam": pgc.XGradCAM,
    "hirescam": pgc.HiResCAM,
    "layercam": pgc.LayerCAM,
    "gradcam-elementwise": pgc.GradCAMElementWise,
}


class SignCorrectedEigenCAM(pgc.EigenCAM):
    """pytorch-grad-cam's EigenCAM with its sign-corrected projection (the sign our graph defines)."""

    def get_cam_image(self, input_tensor, target_layer, target_category, activations, grads, eigen_smooth):
        return get_2d_projection_with_sign_correction(activations)


class SignCorrectedEigenGradCAM(pgc.EigenGradCAM):
    def get_cam_image(self, input_tensor, target_layer, target_category, activations, grads, eigen_smooth):
        return get_2d_projection_with_sign_correction(grads * activations)


EIGEN_ORACLE = {"eigencam": SignCorrectedEigenCAM, "eigengradcam": SignCorrectedEigenGradCAM}


def oracle_cam(
    model, layer_name: str, images: torch.Tensor, classes, method: str, reshape_transform=None
) -> np.ndarray:
    """pytorch-grad-cam's maps ``[N, H, W]`` for ``classes`` (one per image).

    Its output is normalize(resize(normalize_eps(cam))); min-max normalization is
    invariant to the positive affine map in between, so this equals our
    upsample-then-normalize up to its 1e-7 eps.

    pytorch-grad-cam keeps the layer's output as ``output.cpu().detach()``, which on
    the CPU shares its storage: an in-place op after the layer (timm's DLA runs
    ``ReLU(inplace=True)`` right after ``bn1``) rewrites the activations it stored,
    while its gradient is still the pre-ReLU one, and its map is then that of no layer
    (1.0 off on dla46x_c). A hook registered after its own hands the rest of the model
    a copy, so its stored activations stay the layer's output.
    """
    if method in MORE_ORACLE and reshape_transform is None:
        return _more_cam(model, layer_name, images, classes, method)
    layer = dict(model.named_modules())[layer_name]
    with {**ORACLE, **EIGEN_ORACLE}[method](model, [layer], reshape_transform=reshape_transform) as cam:
        handle = layer.register_forward_hook(lambda _m, _i, output: output.clone())
        try:
            return cam(images, targets=[ClassifierOutputTarget(int(c)) for c in classes])
        finally:
            handle.remove()


MORE_ORACLE = ("randomcam", "finercam", "ablationcam")


def _more_cam(model, layer_name: str, images: torch.Tensor, classes, method: str) -> np.ndarray:
    """:func:`oracle_cam` for RandomCAM (drawing our documented weights: numpy's ``default_rng(0)``),
    FinerCAM (one image at a time: its ``target_idx`` is one class for a batch) and AblationCAM
    (``batch_size=1``: its batches of 32 compound the ablation value of layers whose minimum is not 0)."""
    if method == "finercam":
        return np.concatenate(
            [more_oracle(model, layer_name, images[i : i + 1], None, method, target_idx=int(c))
             for i, c in enumerate(classes)]
        )  # fmt: skip
    if method == "ablationcam":
        return more_oracle(model, layer_name, images, classes, method, batch_size=1)
    channels = []
    layer = dict(model.named_modules())[layer_name]
    handle = layer.register_forward_hook(lambda _m, _i, output: channels.append(output.shape[1]))
    try:
        with torch.no_grad():
            model(images[:1])
    finally:
        handle.remove()
    weights = np.random.default_rng(0).uniform(-1, 1, channels[0])
    with mock.patch.object(np.random, "uniform", lambda low, high, size: np.tile(weights, (size[0], 1))):
        return more_oracle(model, layer_name, images, classes, method)


def more_oracle(model, layer_name: str, images: torch.Tensor, classes, method: str, **call) -> np.ndarray:
    """pytorch-grad-cam's RandomCAM, FinerCAM (``classes`` None: its own choice) or AblationCAM maps ``[N, H, W]``.

    ``call`` goes to the CAM's call (``aug_smooth``, ``eigen_smooth``) or, as ``batch_size``,
    to AblationCAM. The caller sets RandomCAM's draws (numpy's global RNG).
    """
    layer = dict(model.named_modules())[layer_name]
    cls = {"randomcam": pgc.RandomCAM, "finercam": pgc.FinerCAM, "ablationcam": pgc.AblationCAM}[method]
    options = {"batch_size": call.pop("batch_size")} if "batch_size" in call else {}
    targets = None if classes is None else [ClassifierOutputTarget(int(c)) for c in classes]
    with cls(model, [layer], **options) as cam:
        return cam(images, targets=targets, **call)


def oracle_fullgrad(model, images: torch.Tensor, classes, *, sign_corrected: bool = True, **call) -> np.ndarray:
    """pytorch-grad-cam's FullGrad maps ``[N, H, W]`` for ``classes`` (one per image; None: each pass's own
    top class); it ignores target layers. ``call`` goes to its call (``aug_smooth``, ``eigen_smooth``); its
    ``eigen_smooth`` projects with ``get_2d_projection_with_sign_correction`` (our sign) unless not
    ``sign_corrected`` (LAPACK's sign)."""
    import contextlib
    import io

    from pytorch_grad_cam import fullgrad_cam

    projection = get_2d_projection_with_sign_correction if sign_corrected else fullgrad_cam.get_2d_projection
    targets = None if classes is None else [ClassifierOutputTarget(int(c)) for c in classes]
    with (
        contextlib.redirect_stdout(io.StringIO()),  # it prints a warning
        mock.patch.object(fullgrad_cam, "get_2d_projection", projection),
        pgc.FullGrad(model, []) as cam,
    ):
        return cam(images, targets=targets, **call)


def oracle_guided_backprop(model, images: torch.Tensor, classes) -> np.ndarray:
    """pytorch-grad-cam's ``GuidedBackpropReLUModel`` gradients ``[N, 3, H, W]``, one image at a time
    (it explains ``output[0]`` only), on a copy: it swaps the model's nn.ReLU modules for new ones."""
    import copy

    guided = pgc.GuidedBackpropReLUModel(copy.deepcopy(model), device=images.device)
    return np.stack([guided(images[i : i + 1], int(c)).transpose(2, 0, 1) for i, c in enumerate(classes)])
