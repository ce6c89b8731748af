"""runtime.road and ROAD in runtime.evaluate against pytorch-grad-cam's ROAD (the oracle)."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
import torch
from conftest import ArtifactLogits, smooth_images
from pytorch_grad_cam.metrics import road as upstream
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

from gradcam_model.errors import InputError
from gradcam_model.runtime import evaluate
from gradcam_model.runtime.road import check_percentiles, impute, road_mask

PERCENTILES = (20, 50, 80)


@pytest.fixture(scope="module")
def images():
    return smooth_images(4, seed=11)


@pytest.fixture
def noiseless(monkeypatch):
    """pytorch-grad-cam's ROAD classes build ``NoisyLinearImputer()`` with noise 0.01 and torch's RNG: set 0."""

    class Noiseless(upstream.NoisyLinearImputer):
        def __init__(self, noise=0.0, weighting=upstream.neighbors_weights):
            super().__init__(0.0, weighting)

    monkeypatch.setattr(upstream, "NoisyLinearImputer", Noiseless)


def _upstream_mask(cam: np.ndarray, percentile: float, morf: bool) -> torch.Tensor:
    """pytorch-grad-cam's RemoveMostRelevantFirst mask (1 = kept), from its own code path."""
    mask = torch.from_numpy(cam) if morf else 1 - torch.from_numpy(cam)
    return torch.from_numpy(np.float32(mask < np.percentile(mask.numpy(), percentile)))


@pytest.mark.parametrize("shape", [(16, 20), (23, 9)])
def test_imputation_equals_the_sparse_solve(shape):
    rng = np.random.default_rng(0)
    image = rng.standard_normal((3, *shape)).astype(np.float32)
    cam = cv2.GaussianBlur(rng.random(shape).astype(np.float32), (5, 5), 2)
    for percentile in (10, 45, 90):
        for morf in (True, False):
            removed = road_mask(cam, percentile, morf)
            kept = _upstream_mask(cam, percentile, morf)
            np.testing.assert_array_equal(removed, kept.numpy() == 0)
            ours = impute(image, removed, noise=0.0)
            theirs = upstream.NoisyLinearImputer(noise=0.0)(torch.from_numpy(image), kept).numpy()
            np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)
            assert np.abs(ours - image)[:, removed].max() > 1e-3  # the removed pixels did change
            np.testing.assert_array_equal(ours[:, ~removed], image[:, ~removed])


def test_the_noise_is_seeded_and_has_the_asked_scale():
    rng = np.random.default_rng(1)
    image = rng.standard_normal((3, 32, 32)).astype(np.float32)
    removed = rng.random((32, 32)) < 0.5
    clean = impute(image, removed, noise=0.0)
    noisy = impute(image, removed, noise=0.01, seed=3)
    np.testing.assert_array_equal(noisy, impute(image, removed, noise=0.01, seed=3))
    assert np.std((noisy - clean)[:, removed]) == pytest.approx(0.01, rel=0.1)


def test_a_flat_map_keeps_no_pixel_and_is_not_imputed():
    flat = np.zeros((8, 8), np.float32)
    assert road_mask(flat, 50, True) is None  # upstream solves a singular system here and returns zeros
    assert road_mask(flat, 50, False) is None
    zeros = np.zeros((8, 8), np.float32)
    zeros[0, 0] = 1.0
    assert road_mask(zeros, 50, True) is None  # threshold 0: every pixel is ">= 0"
    assert road_mask(zeros, 50, False).sum() == 63  # 1 - map: only the maximum is kept


def test_road_scores_equal_pytorch_grad_cam(static, images, noiseless):
    evaluation = evaluate(static, images, metrics=["road"], percentiles=PERCENTILES, road_noise=0.0, batch_size=7)
    result = static(images)
    cams, classes = result.cam[:, 0], result.class_index[:, 0]
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in classes]
    model = ArtifactLogits(static)
    x = torch.from_numpy(images)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a flat mask makes scipy warn about a singular matrix
        morf = upstream.ROADMostRelevantFirstAverage(list(PERCENTILES))(x, cams, targets, model)
        lerf = upstream.ROADLeastRelevantFirstAverage(list(PERCENTILES))(x, cams, targets, model)
        combined = upstream.ROADCombined(list(PERCENTILES))(x, cams, targets, model)
    defined = np.array([all(road_mask(c, p, True) is not None for p in PERCENTILES) for c in cams])
    assert defined.sum() >= 2  # the comparison is not empty
    np.testing.assert_allclose(evaluation.scores["road_morf"][defined], morf[defined], rtol=0, atol=1e-4)
    np.testing.assert_allclose(evaluation.scores["road_lerf"], lerf, rtol=0, atol=1e-4)
    np.testing.assert_allclose(evaluation.scores["road_combined"][defined], combined[defined], rtol=0, atol=1e-4)
    assert np.isnan(evaluation.scores["road_morf"][~defined]).all()  # upstream: an all-zero image, silently
    assert evaluation.curves["road_morf"].shape == (len(images), len(PERCENTILES))
    assert np.ptp(evaluation.scores["road_lerf"]) > 1e-3  # the images differ


@pytest.mark.parametrize(
    ("percentiles", "match"),
    [([0, 10], "got 0"), ([100], "got 100"), ([], "lie in"), (["ten"], "must be numbers"), ([-5], "got -5")],
)
def test_bad_percentiles(percentiles, match):
    with pytest.raises(InputError, match=match):
        check_percentiles(percentiles)
