"""pytorch-grad-cam as an independent oracle."""

from __future__ import annotations

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


def oracle_cam(model, layer_name: str, images: torch.Tensor, classes, method: str) -> np.ndarray:
    """pytorch-grad-cam's maps ``[N, H, W]`` for ``classes`` (one per image).

    Its output is normalize(resize(normalize_eps(cam))); min-max normalization is
    invariant to the positive affine map in between, so this equals our
    upsample-then-normalize up to its 1e-7 eps.
    """
    layer = dict(model.named_modules())[layer_name]
    with {**ORACLE, **EIGEN_ORACLE}[method](model, [layer]) as cam:
        return cam(images, targets=[ClassifierOutputTarget(int(c)) for c in classes])
