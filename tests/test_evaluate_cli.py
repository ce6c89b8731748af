"""``gradcam evaluate`` on the command line: baselines side by side, error rows, bad flags, serve-only installs."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from gradcam_model.cli import main


def test_the_cli_scores_baselines_and_explains_how_to_read_them(artifacts, picture_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["evaluate", str(artifacts["static.onnx"]), str(picture_dir), "--out", str(out), "--steps", "3"]
    assert main([*args, "--random-draws", "2", "--metrics", "deletion,insertion"]) == 0
    printed = capsys.readouterr().out
    assert "| metric | better | gradcam | random | centre | inverted | margin over best baseline [95% CI] |" in printed
    assert "too few images to tell (3 < 5)" in printed  # three pictures: no verdict
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["baselines"]) == {"random", "centre", "inverted"} and summary["random_grid"] == [8, 8]
    assert [m["metric"] for m in summary["margins"]] == ["deletion", "insertion"]
    text = (out / "summary.md").read_text()
    assert "## How to read it" in text and "pixel-order random deletion" in text and "lower is better" in text
    plot = cv2.cvtColor(cv2.imread(str(out / "deletion.png")), cv2.COLOR_BGR2RGB)
    legend = plot[40:130, 300:]  # the legend box, top right: one line per series in its colour
    from gradcam_model.runtime.plots import SERIES_COLOURS

    for colour in SERIES_COLOURS[:4]:
        assert (np.abs(legend.astype(int) - colour).sum(axis=2) < 30).sum() > 20, colour


def test_an_unreadable_picture_gets_an_error_row_and_the_rest_are_scored(artifacts, picture_dir, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    out = tmp_path / "eval"
    args = ["evaluate", str(artifacts["static.onnx"]), str(picture_dir), str(broken), "--out", str(out)]
    assert main([*args, "--steps", "2", "--baselines", "none", "--metrics", "deletion"]) == 1
    assert "broken.png: not scored:" in capsys.readouterr().err
    rows = (out / "evaluation.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[-1].startswith("broken.png,,,,,,") and "not a readable image" in rows[-1]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--baselines", "random,noise"], "--baselines: unknown baseline 'noise'; expected some of: random,"),
        (["--metrics", "deletion,auc"], "--metrics: unknown metric 'auc'"),
        (["--steps", "1"], "--steps needs at least 2 steps, got 1"),
        (["--road-percentiles", "0,50"], "--road-percentiles: ROAD percentiles must lie in (0, 100), got 0"),
        (["--road-percentiles", "50,100"], "got 100"),
        (["--road-percentiles", "fifty"], "expected numbers in (0, 100) separated by commas, got 'fifty'"),
    ],
)
def test_cli_bad_options_are_one_line_and_exit_2(artifacts, picture_dir, tmp_path, capsys, flags, message):
    args = ["evaluate", str(artifacts["static.onnx"]), str(picture_dir), "--out", str(tmp_path / "o"), *flags]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gradcam: error: ") and message in err
    assert not (tmp_path / "o").exists()


def test_compare_methods_on_a_serve_install_names_the_extra_and_the_model(
    artifacts, picture_dir, tmp_path, monkeypatch, capsys
):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    args = ["evaluate", str(artifacts["static.onnx"]), str(picture_dir), "--out", str(tmp_path / "o")]
    assert main([*args, "--compare-methods"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--arch NAME (and --weights FILE" in err and "gradcam_model[export]" in err
    assert main([*args, "--randomize-check", "--arch", "resnet18"]) == 2
    err = capsys.readouterr().err
    assert "--arch" not in err and "lacks torch" in err
