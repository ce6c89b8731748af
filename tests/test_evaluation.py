"""The build side of ``gradcam evaluate``: methods compared through their artifacts, the randomization check."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from gradcam_model import GradCAMModel, reference_cam
from gradcam_model.checks.calibration import calibrate
from gradcam_model.checks.evaluation import build_wrappers, compare_methods
from gradcam_model.checks.randomization import (
    FLAG_THRESHOLD,
    RandomizationResult,
    cascade_steps,
    randomization_check,
    randomized_copy,
    spearman,
)
from gradcam_model.cli import main
from gradcam_model.graph.methods import METHODS, CAMMethod
from gradcam_model.runtime import evaluate
from gradcam_model.runtime.visualize import save_png

SIZE = 16
STEPS = 4


def tiny() -> nn.Module:
    """Two conv stages, global average pool, Linear: seeded, BatchNorm calibrated (a factory for --arch)."""
    torch.manual_seed(0)
    model = nn.Sequential()
    model.features = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
    )  # fmt: skip
    model.pool = nn.AdaptiveAvgPool2d(1)
    model.flat = nn.Flatten()
    model.fc = nn.Linear(16, 5)
    return calibrate(model, SIZE)


class ActivationsOnly(CAMMethod):
    """A map that ignores the gradient, hence the classifier: what the check must catch."""

    name = "activations"

    def saliency(self, activations, gradients):
        return activations.sum(1)


@pytest.fixture(scope="module")
def model():
    return tiny()


@pytest.fixture(scope="module")
def images():
    return torch.randn(6, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)).numpy()


@pytest.fixture(scope="module")
def compared(model, images, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    result = compare_methods(
        model, images, out_dir=out, methods=["gradcam", "layercam"], target_layer="features",
        evaluate_options={"steps": STEPS},
    )  # fmt: skip
    return out, result


def test_compare_methods_scores_each_artifact_as_evaluate_does(compared, images):
    out, result = compared
    assert list(result.evaluations) == ["gradcam", "layercam"] and not result.not_scored and not result.parity_failed
    for method, evaluation in result.evaluations.items():
        alone = evaluate(result.artifacts[method], images, steps=STEPS)
        for metric, scores in alone.scores.items():
            np.testing.assert_allclose(evaluation.scores[metric], scores, rtol=0, atol=1e-12)
    grad, layer = (result.evaluations[m] for m in ("gradcam", "layercam"))
    assert not np.allclose(grad.curves["deletion"], layer.curves["deletion"])  # the methods rank pixels differently
    saved = json.loads((out / "comparison.json").read_text())
    assert saved["methods"]["layercam"]["summary"]["deletion"] == pytest.approx(layer.summary()["deletion"])
    assert json.loads((out / "parity.json").read_text())["ok"]
    table = (out / "comparison.md").read_text()
    assert f"| gradcam | {grad.summary()['average_drop']:.4f} |" in table
    assert sorted(p.name for p in (out / "artifacts").iterdir()) == ["gradcam.onnx", "layercam.onnx"]


def test_a_method_the_model_refuses_is_reported_not_raised(model, images):
    # CAM needs the layer to feed the global pool directly; features.1 is followed by a ReLU
    wrappers, refused = build_wrappers(
        model, ["cam"], example_input=torch.from_numpy(images[:2]), target_layer="features.1"
    )
    assert not wrappers and "global-average-pool + Linear head" in refused["cam"]


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    a = np.maximum(rng.standard_normal((8, 8)), 0)  # a ReLU'd map: many tied zeros
    b = np.maximum(a + rng.standard_normal((8, 8)), 0)
    assert spearman(a, b) == pytest.approx(spearmanr(a.ravel(), b.ravel()).statistic, abs=1e-12)
    assert np.isnan(spearman(np.zeros((4, 4)), b[:4, :4]))


@pytest.fixture(scope="module")
def checked(model, images):
    example = torch.from_numpy(images[:2])
    wrappers = {
        m.name if isinstance(m, CAMMethod) else m: GradCAMModel(
            model, "features", method=m, example_input=example, class_input=True
        )
        for m in ("gradcam", ActivationsOnly())
    }
    return randomization_check(model, images, wrappers)


def test_randomization_flags_a_map_that_ignores_the_classifier(checked):
    assert [s.layers for s in checked.steps[:2]] == [(), ("fc",)] and checked.head_step == 1
    grad, acts = checked.mean_abs_rho("gradcam"), checked.mean_abs_rho("activations")
    assert acts[1] == pytest.approx(1.0, abs=1e-12)  # the classifier alone changed: this map did not
    assert grad[1] < FLAG_THRESHOLD  # Grad-CAM's map follows the classifier's weights
    assert acts[-1] < 0.9  # randomizing the convolutions changes even the activations' map
    assert checked.flagged == ["activations"]


def test_randomized_graph_maps_equal_the_eager_reference(model, images, checked):
    """The swapped graph buffers give the maps of the randomized model itself (reference_cam)."""
    x = torch.from_numpy(images)
    classes = torch.from_numpy(checked.classes)
    last = checked.steps[-1]
    layers = [name for s in checked.steps[1:] for name in s.layers]
    randomized = randomized_copy(model, layers, seed=0)
    before = reference_cam(model, "features", x, classes).numpy()[:, 0]
    after = reference_cam(randomized, "features", x, classes).numpy()[:, 0]
    expected = [spearman(b, a) for b, a in zip(before, after, strict=True)]
    np.testing.assert_allclose(checked.rho["gradcam"][last.index], expected, atol=1e-6)
    assert not np.allclose(expected, 1.0)


def test_cascade_splits_blocks_at_the_target_layer(model, images):
    steps = cascade_steps(model, "features.3", torch.from_numpy(images))
    assert [(s.layers, s.above_target) for s in steps[1:]] == [
        (("fc",), True),
        (("features.4",), True),
        (("features.3", "features.1", "features.0"), False),
    ]


def test_flag_rule_on_synthetic_correlations():
    steps = tuple(cascade_steps(tiny(), "features", torch.zeros(2, 3, SIZE, SIZE)))
    rho = {"pass": np.array([[1.0, 1.0], [0.6, -0.3], [0.9, 0.9]]), "fail": np.array([[1.0, 1.0], [-0.7, 0.5], [0, 0]])}
    result = RandomizationResult("features", steps[:3], rho, np.zeros(2, dtype=np.int64))
    assert result.head_step == 1 and result.flagged == ["fail"]  # mean |rho| at the flag step: 0.45 vs 0.6
    assert "fail FAILS" in result.table() and "pass passes" in result.table()


@pytest.fixture(scope="module")
def photos(images, tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for i, image in enumerate(images[:3]):
        save_png(folder / f"{i}.png", (np.clip(image.transpose(1, 2, 0) * 0.2 + 0.5, 0, 1) * 255).astype(np.uint8))
    return folder


def test_cli_build_side_needs_arch(compared, photos, tmp_path, capsys):
    _, result = compared
    code = main(
        ["evaluate", str(result.artifacts["gradcam"]), str(photos), "--out", str(tmp_path), "--compare-methods"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "it needs --arch NAME" in err and "[export]" not in err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--methods", "gradcam"], "--methods applies to --compare-methods and --randomize-check"),
        (["--compare-methods", "--methods", "gradcam,gradcmp"], "gradcmp"),
        # a usage error: argparse's usage lines, then the message
        (["--compare-methods", "--methods", "gradcam,"], "expected method names separated by commas"),
    ],
)
def test_cli_methods_errors(compared, photos, tmp_path, capsys, extra, message):
    _, result = compared
    out = tmp_path / "out"
    argv = ["evaluate", str(result.artifacts["gradcam"]), str(photos), "--out", str(out), "--arch", f"{__name__}:tiny"]
    code = main([*argv, *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and message in err[-1], err
    assert len(err) == 1 or err[0].startswith("usage: gradcam evaluate")
    assert not out.exists()


def test_cli_randomize_check(compared, photos, tmp_path, capsys):
    _, result = compared
    argv = ["evaluate", str(result.artifacts["gradcam"]), str(photos), "--out", str(tmp_path)]
    # two methods keep the test short (each is one graph to build); the default is every method
    code = main([*argv, "--arch", f"{__name__}:tiny", "--randomize-check", "--methods", "gradcam, layercam"])
    report = json.loads((tmp_path / "randomization.json").read_text())
    assert report["target_layer"] == "features" and report["steps"][1]["layers"] == ["fc"]
    assert set(report["steps"][0]["mean_abs_rho"]) == {"gradcam", "layercam"}
    assert code == (1 if report["flagged"] else 0)
    assert "| 1 | `fc` (flag step) | 1 |" in capsys.readouterr().out


def test_the_comparison_table_holds_the_baselines_and_each_methods_verdicts(compared, images):
    from gradcam_model.checks.evaluation import Comparison

    _, result = compared
    evaluations = {
        m: evaluate(result.artifacts[m], images, steps=STEPS, baselines=["centre", "inverted"], metrics=["deletion"])
        for m in ("gradcam", "layercam")
    }
    table = Comparison(evaluations, {}, {m: {"export": 1.0} for m in evaluations}).table()
    centre = evaluations["gradcam"].baseline_summary()["centre"]["deletion"]
    assert f"| baseline: centre | {centre:.4f} | |" in table
    assert "baseline: inverted" not in table  # each method's own map inverted: not one row
    for method, evaluation in evaluations.items():
        (g,) = evaluation.margins()
        assert f"- {method}: Deletion AUC {g.verdict} ({g.margin:+.4f}" in table


# every method, and a few with options: what `gradcam evaluate --compare-methods` builds by default and beyond
EVERY_METHOD = [*METHODS, "gradcam+eigen-smooth", "layercam+aug-smooth", "randomcam+seed-3", "fullgrad+eigen-smooth"]


def _direct_scores(path, images: np.ndarray) -> tuple[float, float]:
    """Mean Average Drop and deletion AUC (blur, ``STEPS`` steps) computed here, image by image, through the
    artifact: ``max(0, Y_c - p_c(x M)) / Y_c`` and the trapezoid of ``p_c`` as the top-ranked pixels blur."""
    from gradcam_model.runtime import load_explainer
    from gradcam_model.runtime.perturbation import ranks, substrate

    explainer = load_explainer(path)
    drops, aucs = [], []
    for x in images:
        result = explainer(x[None])
        c, cam = int(result.class_index[0, 0]), result.cam[0, 0]
        y = float(result.probabilities[0, c])
        drops.append(max(0.0, y - float(explainer(x[None] * cam).probabilities[0, c])) / y)
        order, blurred, curve = ranks(cam), substrate(x, "blur"), []
        for s in range(STEPS + 1):
            deleted = order < (s * cam.size) // STEPS
            curve.append(float(explainer(np.where(deleted, blurred, x)[None]).probabilities[0, c]))
        aucs.append(float(np.trapezoid(curve, dx=1 / STEPS)))
    return float(np.mean(drops)), float(np.mean(aucs))


def test_cli_compare_methods_scores_every_method(compared, photos, tmp_path, capsys):
    """Every method through the command line on a small model: each one's row, finite scores, one score checked
    directly; the input-resolution methods are scored from their ``cam`` output like the others."""
    from gradcam_model.runtime import load_explainer
    from gradcam_model.runtime.boxes import load_inputs
    from gradcam_model.runtime.inputs import collect_images

    _, result = compared
    out = tmp_path / "every"
    argv = ["evaluate", str(result.artifacts["gradcam"]), str(photos), "--out", str(out), "--arch", f"{__name__}:tiny"]
    code = main([*argv, "--compare-methods", "--methods", ",".join(EVERY_METHOD), "--steps", str(STEPS)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    report = json.loads((out / "comparison.json").read_text())
    assert list(report["methods"]) == EVERY_METHOD and not report["not_scored"]
    for method, scored in report["methods"].items():
        assert f"| {method} | " in printed
        assert scored["images"] == 3 and set(scored["summary"]) == {"average_drop", "increase_in_confidence",
                                                                     "deletion", "insertion"}  # fmt: skip
        assert all(np.isfinite(v) for v in scored["summary"].values()), (method, scored["summary"])
        assert scored["baselines"] and all(np.isfinite(v) for b in scored["baselines"].values() for v in b.values())
    summary = {m: report["methods"][m]["summary"] for m in EVERY_METHOD}
    # guided-backprop: an input-resolution map (max_c |guided_c|) and a sixth output, not scored
    path = out / "artifacts" / "guided-backprop.onnx"
    images, _ = load_inputs(collect_images([photos]), load_explainer(path).metadata)
    drop, deletion = _direct_scores(path, images)
    assert summary["guided-backprop"]["average_drop"] == pytest.approx(drop, abs=2e-6)
    assert summary["guided-backprop"]["deletion"] == pytest.approx(deletion, abs=2e-6)
    # guided Grad-CAM's cam output is its Grad-CAM map: the same scores as gradcam's
    assert summary["guided-gradcam"] == pytest.approx(summary["gradcam"], abs=1e-4)
    assert summary["guided-backprop"] != pytest.approx(summary["gradcam"], abs=1e-3)
