"""runtime.baselines: the baseline maps, the grid they are drawn on, the margins and verdicts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import smooth_images

from gradcam_model.errors import InputError
from gradcam_model.runtime import Explainer, evaluate
from gradcam_model.runtime.baselines import baseline_maps, check_baselines, feature_grid, margins

BETTER = {"deletion": "lower", "insertion": "higher"}


@pytest.fixture(scope="module")
def images():
    return smooth_images(5, seed=3)


def test_the_grid_is_found_from_the_artifact_maps(static, dynamic, images):
    assert feature_grid(static(images).cam[:, 0]) == (8, 8)  # layer2: 64 / 8
    assert feature_grid(dynamic(images).cam[:, 0]) == (2, 2)  # layer4: 64 / 32
    wide = dynamic(np.ascontiguousarray(np.concatenate([images[:2], images[2:4, :, :, :32]], axis=3))).cam[:, 0]
    assert wide.shape == (2, 64, 96) and feature_grid(wide) == (2, 3)
    upsampled = torch.nn.functional.interpolate(torch.rand(2, 1, 3, 5), size=(48, 80), mode="bilinear")
    assert feature_grid(upsampled[:, 0].numpy()) == (3, 5)  # torch's align_corners=False, independently


def test_random_maps_are_smooth_seeded_noise_upsampled_like_torch():
    maps = np.zeros((3, 48, 80), np.float32)
    one = baseline_maps("random", maps, draw=0, grid=(3, 5), seed=7)
    assert one.shape == (3, 48, 80) and one.dtype == np.float32
    np.testing.assert_array_equal(one, baseline_maps("random", maps, draw=0, grid=(3, 5), seed=7))
    assert not np.allclose(one, baseline_maps("random", maps, draw=1, grid=(3, 5), seed=7))
    noise = np.random.default_rng([7, 0]).random((3, 3, 5))
    up = torch.nn.functional.interpolate(torch.from_numpy(noise)[:, None], size=(48, 80), mode="bilinear")[:, 0]
    low, high = up.amin(dim=(1, 2), keepdim=True), up.amax(dim=(1, 2), keepdim=True)
    np.testing.assert_allclose(one, ((up - low) / (high - low)).numpy(), atol=1e-6)
    assert feature_grid(one) == (3, 5)


def test_centre_and_inverted_maps():
    maps = np.random.default_rng(0).random((2, 40, 60)).astype(np.float32)
    centre = baseline_maps("centre", maps)
    assert centre.shape == (2, 40, 60) and centre.max() == 1.0
    assert np.unravel_index(np.argmax(centre[0]), (40, 60)) in {(19, 29), (19, 30), (20, 29), (20, 30)}
    np.testing.assert_allclose(centre[0], centre[0, ::-1, ::-1], atol=1e-7)  # symmetric about the centre
    np.testing.assert_array_equal(baseline_maps("inverted", maps), 1 - maps)


class _Inverted(Explainer):
    """The artifact with its maps replaced by 1 - map after it ran: what the inverted baseline must score."""

    def __init__(self, inner):
        super().__init__(inner.path, inner.metadata)
        self.inner = inner

    def _run(self, image, target_class):
        logits, probs, index, score, cam = self.inner._run(image, target_class)
        return logits, probs, index, score, 1 - cam


def test_a_baseline_is_scored_as_the_method_would_score_that_map(static, images):
    options = {"metrics": ["average_drop", "deletion", "insertion"], "steps": 4, "batch_size": 6}
    evaluation = evaluate(static, images, baselines=["inverted", "centre"], **options)
    alone = evaluate(_Inverted(static), images, **options)
    for metric, values in alone.scores.items():
        np.testing.assert_allclose(evaluation.baseline_scores["inverted"][metric], values, atol=1e-7)
    np.testing.assert_allclose(evaluation.baseline_curves["inverted"]["deletion"], alone.curves["deletion"])
    assert list(evaluation.baseline_scores) == ["centre", "inverted"]  # canonical order
    assert {g.metric for g in evaluation.margins()} == {"average_drop", "deletion", "insertion"}


def test_margins_verdicts_follow_the_interval():
    rng = np.random.default_rng(0)
    base = rng.random(40)
    cases = {
        "better": base - 0.2,  # deletion: lower is better
        "worse": base + 0.2,
        "same": base + rng.normal(0, 0.05, 40),
    }
    for expected, method in cases.items():
        (g,) = margins({"deletion": method}, {"a": {"deletion": base}, "b": {"deletion": base + 0.5}}, BETTER)
        assert g.best_baseline == "a" and g.images == 40
        assert g.margin == pytest.approx(np.mean(base) - np.mean(method))  # positive: the method is better
        assert g.low <= g.margin <= g.high
        assert g.verdict == {"better": "better than every baseline", "worse": "worse"}.get(
            expected, "not distinguishable"
        )
    (few,) = margins({"insertion": base[:3] + 1}, {"a": {"insertion": base[:3]}}, BETTER)
    assert few.verdict.startswith("too few images") and few.margin == pytest.approx(1.0)
    with_nan = np.where(np.arange(40) < 5, np.nan, base)
    (g,) = margins({"deletion": with_nan}, {"a": {"deletion": base}}, BETTER)
    assert g.images == 35


def test_unknown_baselines_are_refused():
    assert check_baselines(None) == ("random", "centre", "inverted")
    assert check_baselines(["inverted", "random"]) == ("random", "inverted")
    with pytest.raises(InputError, match="unknown baseline 'noise'; expected some of: random, centre, inverted"):
        check_baselines(["noise"])


def test_baselines_play_the_pointing_game_too(static, images):
    boxes = {"0": [(28, 28, 36, 36)], "1": [(0, 0, 8, 8)]}  # around the centre; a corner
    evaluation = evaluate(static, images[:2], metrics=["pointing_game"], boxes=boxes, pointing_tolerance=2,
                          baselines=["centre", "inverted"])  # fmt: skip
    np.testing.assert_array_equal(evaluation.baseline_scores["centre"]["pointing_game"], [1.0, 0.0])
    cams = 1 - static(images[:2]).cam[:, 0]
    for i, (x0, y0, x1, y1) in enumerate([boxes["0"][0], boxes["1"][0]]):
        row, col = np.unravel_index(np.argmax(cams[i]), cams[i].shape)
        dx, dy = max(x0 - col - 0.5, 0, col + 0.5 - x1), max(y0 - row - 0.5, 0, row + 0.5 - y1)
        hit = float(np.hypot(dx, dy) <= 2)
        assert evaluation.baseline_scores["inverted"]["pointing_game"][i] == hit
