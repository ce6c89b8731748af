"""runtime.evaluate and ``gradcam evaluate``: each metric against an independent implementation, edge cases, errors."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from conftest import ArtifactLogits, smooth_images
from pytorch_grad_cam.metrics.cam_mult_image import DropInConfidence, IncreaseInConfidence
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

from gradcam_model.cli import main
from gradcam_model.errors import ArtifactError, InputError
from gradcam_model.runtime import Explainer, collect_images, evaluate
from gradcam_model.runtime.boxes import read_boxes

STEPS = 6


@pytest.fixture(scope="module")
def images():
    return smooth_images(3, seed=3)


@pytest.fixture(scope="module")
def scored(static, images):
    return evaluate(static, images, steps=STEPS, batch_size=5)


# ---------------------------------------------------------------------------- independent implementations


def rise(explainer, image, cam, cls, steps, baseline, mode, class_index=None):
    """Petsiuk et al.'s deletion/insertion, one image and one step at a time: (curve, AUC)."""
    h, w = cam.shape
    order = sorted(range(h * w), key=lambda p: (-float(cam[p // w, p % w]), p))  # descending, ties in raster order
    if baseline == "blur":
        base = np.stack([cv2.GaussianBlur(channel, (11, 11), 5) for channel in image])
    else:
        base = np.zeros_like(image)
    start, source = (image, base) if mode == "deletion" else (base, image)
    curve = []
    for s in range(steps + 1):
        n = s * h * w // steps
        x = start.copy()
        for p in order[:n]:
            x[:, p // w, p % w] = source[:, p // w, p % w]
        curve.append(float(explainer(x[None], class_index).probabilities[0, cls]))
    auc = sum((curve[s] + curve[s + 1]) / 2 / steps for s in range(steps))
    return np.array(curve), auc


class _Patched(Explainer):
    """An explainer whose outputs are changed after the artifact ran: all-zero maps, or no probabilities."""

    def __init__(self, inner, *, cam=None, probabilities="keep"):
        super().__init__(inner.path, inner.metadata)
        self.inner, self.cam, self.probabilities = inner, cam, probabilities

    def _run(self, image, target_class):
        logits, probs, index, score, cam = self.inner._run(image, target_class)
        cam = cam if self.cam is None else np.full_like(cam, self.cam)
        return logits, probs if self.probabilities == "keep" else self.probabilities, index, score, cam


# ---------------------------------------------------------------------------- metrics vs oracles


def test_average_drop_and_increase_match_pytorch_grad_cam(static, images, scored):
    result = static(images)
    cams, classes = result.cam[:, 0], result.class_index[:, 0]
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in classes]
    x, model = torch.from_numpy(images), ArtifactLogits(static)
    y = torch.softmax(torch.from_numpy(result.logits).double(), dim=1)[torch.arange(len(classes)), classes].numpy()
    drop = DropInConfidence()(x, cams, targets, model)  # max(0, Y - O), absolute
    increase = IncreaseInConfidence()(x, cams, targets, model)
    np.testing.assert_allclose(scored.scores["average_drop"], drop / y, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(scored.scores["increase_in_confidence"], increase)
    assert scored.scores["average_drop"].max() > 0.05  # the maps do change the confidence
    np.testing.assert_array_equal(scored.classes, classes)
    np.testing.assert_allclose(scored.probabilities, y, atol=1e-6)
    summary = scored.summary()
    assert summary["average_drop"] == pytest.approx(np.mean(drop / y), abs=1e-6)
    assert summary["increase_in_confidence"] == pytest.approx(np.mean(increase), abs=1e-9)
    assert "pointing_game" not in summary  # no boxes


@pytest.mark.parametrize("baseline", ["blur", "mean"])
def test_deletion_and_insertion_match_a_direct_rise_loop(static, images, scored, baseline):
    evaluation = scored if baseline == "blur" else evaluate(static, images[:2], steps=STEPS, baseline="mean")
    cams = static(images).cam[:, 0]
    for i in range(len(evaluation.names)):
        for mode in ("deletion", "insertion"):
            curve, auc = rise(static, images[i], cams[i], int(evaluation.classes[i]), STEPS, baseline, mode)
            np.testing.assert_allclose(evaluation.curves[mode][i], curve, rtol=0, atol=1e-6)
            assert evaluation.scores[mode][i] == pytest.approx(auc, abs=1e-6)
    assert not np.allclose(evaluation.curves["deletion"], evaluation.curves["insertion"])


def test_pointing_game_hits_within_the_tolerance(static, images, scored):
    cams = static(images).cam[:, 0]
    row, col = np.unravel_index(np.argmax(cams[0]), cams[0].shape)
    cx, cy = col + 0.5, row + 0.5  # centre of the maximum
    boxes = {
        "0": [(cx + 10, cy - 1, cx + 20, cy + 1)],  # 10 px to the right of the maximum
        "1": [(0, 0, 64, 64)],  # the whole picture
    }
    near = evaluate(static, images, metrics=["pointing_game"], boxes=boxes, pointing_tolerance=15)
    far = evaluate(static, images, metrics="pointing_game", boxes=boxes, pointing_tolerance=5)
    np.testing.assert_array_equal(near.scores["pointing_game"], [1.0, 1.0, np.nan])
    np.testing.assert_array_equal(far.scores["pointing_game"], [0.0, 1.0, np.nan])
    assert far.summary() == {"pointing_game": 0.5} and far.counts == {"pointing_game": 2}
    assert list(near.scores) == ["pointing_game"] and near.curves == {}


# ---------------------------------------------------------------------------- degenerate inputs


def test_an_all_zero_map_is_scored_in_raster_order_and_points_nowhere(static, images):
    zero = _Patched(static, cam=0.0)
    evaluation = evaluate(zero, images[:1], steps=4, boxes=[[(0, 0, 8, 8)]], batch_size=3)
    assert evaluation.constant_maps.tolist() == [True]
    assert evaluation.scores["pointing_game"].tolist() == [0.0]  # argmax would be (0, 0), inside the box
    y = evaluation.probabilities[0]
    o = static(np.zeros_like(images[:1])).probabilities[0, evaluation.classes[0]]  # image * 0
    assert evaluation.scores["average_drop"][0] == pytest.approx(max(0.0, y - o) / y, abs=1e-6)
    curve, auc = rise(
        static, images[0], np.zeros((64, 64), np.float32), int(evaluation.classes[0]), 4, "blur", "deletion"
    )
    np.testing.assert_allclose(evaluation.curves["deletion"][0], curve, atol=1e-6)


def test_a_constant_image_gives_flat_curves(static):
    flat = np.full((1, 3, 64, 64), 0.7, dtype=np.float32)  # one image: the blur of it is itself
    evaluation = evaluate(static, flat, steps=4)
    y = evaluation.probabilities[0]
    for mode in ("deletion", "insertion"):
        np.testing.assert_allclose(evaluation.curves[mode][0], y, atol=1e-6)
        assert evaluation.scores[mode][0] == pytest.approx(y, abs=1e-6)
    assert evaluation.names == ["0"] and evaluation.summary()["deletion"] == pytest.approx(y, abs=1e-6)


def test_a_class_input_artifact_scores_the_given_class(dynamic, images):
    evaluation = evaluate(dynamic, images[:2], steps=3, class_index=4, metrics=["deletion", "average_drop"])
    assert evaluation.classes.tolist() == [4, 4]
    result = dynamic(images[:2], 4)
    np.testing.assert_allclose(evaluation.probabilities, result.probabilities[:, 4], atol=1e-7)
    curve, auc = rise(dynamic, images[1], result.cam[1, 0], 4, 3, "blur", "deletion", class_index=4)
    np.testing.assert_allclose(evaluation.curves["deletion"][1], curve, atol=1e-6)
    assert list(evaluation.scores) == ["average_drop", "deletion"]


# ---------------------------------------------------------------------------- errors


def _onnx_without_probabilities(path, metadata):
    import onnx
    from onnx import TensorProto, helper

    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])
    outputs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3]),
        helper.make_tensor_value_info("class_index", TensorProto.INT64, ["N", 1]),
        helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1]),
        helper.make_tensor_value_info("cam", TensorProto.FLOAT, ["N", 1, 8, 8]),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["logits"], axes=[2, 3], keepdims=0),
        helper.make_node("ArgMax", ["logits"], ["class_index"], axis=1, keepdims=1),
        helper.make_node("ReduceMax", ["logits"], ["score"], axes=[1], keepdims=1),
        helper.make_node("ReduceMean", ["image"], ["cam"], axes=[1], keepdims=1),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "no_probabilities", [image], outputs),
        opset_imports=[helper.make_opsetid("", 13)],
        ir_version=8,
    )
    onnx.helper.set_model_props(model, metadata.to_props())
    onnx.save(model, str(path))
    return path


def test_an_artifact_without_probabilities_is_refused(static, images, tmp_path):
    from dataclasses import replace

    meta = replace(static.metadata, num_classes=3, class_names=None, input_size=(8, 8))
    path = _onnx_without_probabilities(tmp_path / "bare.onnx", meta)
    with pytest.raises(ArtifactError, match="lacks probabilities"):
        evaluate(path, np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(ArtifactError, match="returns no class probabilities"):
        evaluate(_Patched(static, probabilities=None), images[:1], steps=2)


def test_box_csv_rows_are_mapped_to_the_input_size(picture_dir, tmp_path):
    items = collect_images([picture_dir])
    csv = tmp_path / "boxes.csv"
    csv.write_text("image,x0,y0,x1,y1\na.png,10,20,60,80\na.png,0,0,100,40\nb,50,0,100,80\n")
    boxes = read_boxes(csv, items, [(80, 100)] * 3, (64, 64))
    name_a, name_b = f"{picture_dir.name}/a.png", f"{picture_dir.name}/b.png"  # the names keep the extension
    assert boxes == {name_a: [(6.4, 16.0, 38.4, 64.0), (0.0, 0.0, 64.0, 32.0)], name_b: [(32.0, 0.0, 64.0, 64.0)]}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("image,x0,y0,x1,y1\nzebra.png,1,1,5,5\n", r"line 2: image 'zebra.png' is not among the 3 inputs"),
        ("image,x0,y0,x1,y1\na.png,1,1,5\n", "line 2: expected 5 fields"),
        ("image,x0,y0,x1,y1\na.png,1,1,5,5\nb.png,one,1,5,5\n", "line 3: a box is four numbers"),
        ("image,x0,y0,x1,y1\na.png,5,1,5,5\n", r"line 2: box \(5, 1, 5, 5\) is empty"),
        ("image,x0,y0,x1,y1\na.png,0,0,101,5\n", "outside the 100x80 picture"),
        ("name,left,top,right,bottom\na.png,0,0,5,5\n", "the header must be image,x0,y0,x1,y1"),
        ("image,x0,y0,x1,y1\n", "holds no boxes"),
    ],
)
def test_bad_box_files_are_refused(picture_dir, tmp_path, text, match):
    csv = tmp_path / "boxes.csv"
    csv.write_text(text)
    with pytest.raises(InputError, match=match):
        read_boxes(csv, collect_images([picture_dir]), [(80, 100)] * 3, (64, 64))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"metrics": ["deletion", "auc"]}, "unknown metric"),
        ({"metrics": ["pointing_game"]}, "the pointing game needs object boxes"),
        ({"steps": 1}, "steps must be an integer >= 2"),
        ({"baseline": "black"}, "unknown substrate .* 'black'"),
        ({"baselines": ["random", "noise"]}, "unknown baseline 'noise'"),
        ({"percentiles": [0, 50]}, r"ROAD percentiles must lie in \(0, 100\), got 0"),
        ({"percentiles": [50, 100]}, "got 100"),
        ({"metrics": ["road_morf"], "percentiles": []}, "ROAD percentiles"),
        ({"random_draws": 0}, "random_draws must be a positive integer"),
        ({"boxes": {"zebra": [(0, 0, 1, 1)]}}, "boxes name image 'zebra', which is not among the 3 inputs"),
        ({"boxes": [[(0, 0, 1, 1)]]}, "got boxes for 1 images and 3 images"),
        ({"class_index": 2}, "takes no class"),
    ],
)
def test_bad_options_are_refused(static, images, kwargs, match):
    with pytest.raises(InputError, match=match):
        evaluate(static, images, **kwargs)


# ---------------------------------------------------------------------------- the command line


def test_the_cli_writes_csv_markdown_json_and_plots(artifacts, static, picture_dir, tmp_path, capsys):
    csv = tmp_path / "boxes.csv"
    csv.write_text("image,x0,y0,x1,y1\na.png,0,0,100,80\nb.png,0,0,10,10\n")
    out = tmp_path / "eval"
    args = ["evaluate", str(artifacts["static.onnx"]), str(picture_dir), "--out", str(out), "--steps", "4"]
    assert main([*args, "--boxes", str(csv), "--batch-size", "7", "--baselines", "none"]) == 0
    printed = capsys.readouterr().out
    assert "| Deletion AUC |" in printed and "wrote " in printed
    assert sorted(p.name for p in out.iterdir()) == [
        "deletion.png", "deletion_images.png", "evaluation.csv", "insertion.png", "insertion_images.png",
        "report.html", "summary.json", "summary.md"
    ]  # fmt: skip
    rows = (out / "evaluation.csv").read_text().splitlines()
    assert rows[0] == (
        "image,class_index,class_label,probability,constant_map,average_drop,increase_in_confidence,"
        "deletion,insertion,pointing_game,error"
    )
    assert len(rows) == 4 and rows[1].endswith(",1.000000,") and rows[3].endswith(",,")  # a: hit; c: no box
    assert [row.split(",")[0] for row in rows[1:]] == [f"{picture_dir.name}/{n}.png" for n in "abc"]
    library = evaluate(static, [picture_dir], steps=4, metrics=["deletion"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["summary"]["deletion"] == pytest.approx(library.summary()["deletion"], abs=1e-6)
    assert summary["counts"]["pointing_game"] == 2 and summary["images"] == 3
    deletion, insertion = (cv2.imread(str(out / f"{name}_images.png")) for name in ("deletion", "insertion"))
    assert deletion.shape == (400, 560, 3) and deletion.std() > 10  # not one colour
    assert (deletion.sum(axis=2) < 200).sum() > 500  # dark pixels: axes, ticks, labels
    assert np.abs(deletion.astype(int) - insertion.astype(int)).sum(axis=2).astype(bool).sum() > 200  # other curves
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_cli_errors_are_one_line(artifacts, picture_dir, tmp_path, capsys):
    csv = tmp_path / "boxes.csv"
    csv.write_text("image,x0,y0,x1,y1\nzebra.png,0,0,10,10\n")
    out = tmp_path / "eval"
    args = ["evaluate", str(artifacts["static.onnx"]), str(picture_dir), "--out", str(out), "--steps", "2"]
    assert main([*args, "--boxes", str(csv)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gradcam: error: box file ") and "'zebra.png'" in err
    assert main([*args, "--class", "3"]) == 2
    assert capsys.readouterr().err == (
        f"gradcam: error: --class needs an artifact exported with --class-input; {artifacts['static.onnx']} "
        "explains its top-1 classes\n"
    )
    assert not out.exists()


def test_compare_methods_hands_the_collected_inputs_to_the_build_side(artifacts, picture_dir, tmp_path, monkeypatch):
    import sys
    import types

    seen = {}
    fake = types.ModuleType("gradcam_model.checks.evaluation")  # part 2's module, which owns the torch side
    fake.run_build_side = lambda args, images: seen.update(args=args, images=images) or 0
    monkeypatch.setitem(sys.modules, "gradcam_model.cli._evaluate_build", fake)
    args = ["evaluate", str(artifacts["static.onnx"]), str(picture_dir), "--out", str(tmp_path / "o")]
    assert main([*args, "--compare-methods", "--arch", "resnet18", "--target-layer", "layer3"]) == 0
    assert [item.path.name for item in seen["images"]] == ["a.png", "b.png", "c.png"]
    assert seen["args"].compare_methods and not seen["args"].randomize_check
    assert (seen["args"].arch, seen["args"].target_layer, seen["args"].weights) == ("resnet18", "layer3", None)
