"""explain_files: order, failures, bounded memory, huge and tiny pictures, formats, grid, file modes."""

from __future__ import annotations

import csv
import json
import logging
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from gradcam_model.errors import InputError
from gradcam_model.runtime import CSV_FIELDS, ImageInput, decode_image, explain_files, load_explainer
from gradcam_model.runtime import images as images_module

ROOT = Path(__file__).resolve().parent.parent


def _jpegs(folder: Path, count: int, size=(96, 72), seed=0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        image = cv2.resize(rng.integers(0, 256, (3, 4, 3), dtype=np.uint8), size, interpolation=cv2.INTER_CUBIC)
        path = folder / f"img{i:04d}.jpg"
        cv2.imwrite(str(path), image)
        paths.append(path)
    return paths


def _rows(out: Path) -> list[dict]:
    with open(out / "predictions.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_order_failures_and_outputs(artifacts, tmp_path):
    paths = _jpegs(tmp_path / "in", 21)
    paths[10].write_bytes(b"not an image")  # a corrupt file in the middle
    skipped = []
    summary = explain_files(
        artifacts["static.onnx"], paths, tmp_path / "out", batch_size=4, on_skip=lambda i, r: skipped.append(i.path)
    )
    assert [p.path for p in summary.predictions] == paths  # input order, failure in its place
    assert skipped == [paths[10]] and [f.path for f in summary.failures] == [paths[10]]
    assert summary.explained == 20 and summary.total == 21
    assert summary.provider == "CPUExecutionProvider"
    rows = _rows(tmp_path / "out")
    assert list(rows[0]) == list(CSV_FIELDS)
    assert [r["path"] for r in rows] == [str(p) for p in paths]
    assert "not a readable image" in rows[10]["error"] and rows[10]["overlay"] == ""
    # the numbers are the explainer's on the same preprocessing, batch by batch
    explainer = load_explainer(artifacts["static.onnx"])
    from gradcam_model.runtime import load_image, preprocess

    for i in (0, 11, 20):
        result = explainer(preprocess(load_image(paths[i]), explainer.metadata)[None])
        top = int(result.probabilities[0].argmax())
        assert int(rows[i]["predicted_index"]) == top
        assert float(rows[i]["probability"]) == pytest.approx(float(result.probabilities[0, top]), abs=2e-6)
        overlay = Path(rows[i]["overlay"])
        assert overlay.suffix == ".jpg" and cv2.imread(str(overlay)).shape == (72, 96, 3)
    assert len(list((tmp_path / "out" / "overlays").rglob("*.jpg"))) == 20
    assert not list((tmp_path / "out").rglob("*.tmp"))


def test_png_overlays_and_a_configurable_grid_tile(artifacts, tmp_path):
    paths = _jpegs(tmp_path / "in", 5)
    summary = explain_files(artifacts["static.onnx"], paths, tmp_path / "out", overlay_format="png", tile_size=100)
    assert all(p.overlays[0].suffix == ".png" for p in summary.predictions)
    grid = cv2.imread(str(summary.grid))
    assert grid.shape[1] == 4 * 100 + 5 * 6  # four cells of 100 px and the padding


def test_when_nothing_succeeds_no_overlay_folder_is_claimed(artifacts, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    summary = explain_files(artifacts["static.onnx"], [bad], tmp_path / "out")
    assert summary.explained == 0 and summary.overlays_dir is None and summary.grid is None
    assert not (tmp_path / "out" / "overlays").exists()
    assert _rows(tmp_path / "out")[0]["error"]


def test_files_get_the_umask_mode(artifacts, tmp_path):
    paths = _jpegs(tmp_path / "in", 2)
    old = os.umask(0o022)
    try:
        summary = explain_files(artifacts["static.onnx"], paths, tmp_path / "out")
    finally:
        os.umask(old)
    for path in (summary.csv, summary.grid, *summary.predictions[0].overlays):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_huge_jpeg_is_decoded_reduced_and_capped(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (3000, 4500, 3), dtype=np.uint8)  # noise: a JPEG well over 2 MB
    ok, data = cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok and data.size > images_module._PROBE_BYTES
    flags = []
    real = cv2.imdecode

    def spy(buffer, flag):
        flags.append(flag)
        return real(buffer, flag)

    monkeypatch.setattr(cv2, "imdecode", spy)
    image = decode_image(data, max_side=1000)
    assert max(image.shape[:2]) == 1000 and image.shape == (667, 1000, 3)
    # probed at 1/8, then decoded at 1/4 (1125 px): never at full size
    assert flags == [cv2.IMREAD_REDUCED_COLOR_8, cv2.IMREAD_REDUCED_COLOR_4]
    full = decode_image(data, max_side=None)
    assert full.shape == (3000, 4500, 3)


def test_huge_picture_gives_a_capped_overlay(artifacts, tmp_path):
    path = tmp_path / "wide.png"
    cv2.imwrite(str(path), np.full((500, 3000, 3), 90, np.uint8))
    summary = explain_files(artifacts["static.onnx"], [path], tmp_path / "out", max_side=600)
    assert cv2.imread(str(summary.predictions[0].overlays[0])).shape == (100, 600, 3)


def test_tiny_pictures_warn_once(artifacts, tmp_path, caplog):
    paths = _jpegs(tmp_path / "in", 3, size=(16, 16))
    with caplog.at_level(logging.WARNING, logger="gradcam_model"):
        summary = explain_files(artifacts["static.onnx"], paths, tmp_path / "out")
    warnings = [r for r in caplog.records if "much smaller than the model's 64x64 input" in r.getMessage()]
    assert len(warnings) == 1 and summary.small_images == 3 and summary.explained == 3


def test_no_progress_bar_when_not_a_terminal(artifacts, tmp_path, capsys):
    explain_files(artifacts["static.onnx"], _jpegs(tmp_path / "in", 3), tmp_path / "out")
    assert capsys.readouterr().err == ""


BAD_OPTIONS = [
    ({"alpha": 1.5}, "alpha must be in \\[0, 1\\]"),
    ({"overlay_format": "gif"}, "overlay_format must be one of jpg, png"),
    ({"batch_size": 0}, "batch_size must be a positive integer"),
    ({"max_side": 4}, "max_side must be an integer >= 16"),
    ({"colormap": "jett"}, "unknown colormap 'jett' \\(did you mean jet"),
    ({"class_": 3}, "needs an artifact exported with --class-input"),
]


@pytest.mark.parametrize(("kwargs", "match"), BAD_OPTIONS)
def test_bad_options(artifacts, tmp_path, kwargs, match):
    with pytest.raises(InputError, match=match):
        explain_files(artifacts["static.onnx"], _jpegs(tmp_path / "in", 1), tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_image_inputs_keep_their_keys_and_labels(artifacts, tmp_path):
    paths = _jpegs(tmp_path / "in", 2)
    items = [ImageInput(paths[0], "a/x", "cat"), ImageInput(paths[1], "b/x", None)]
    summary = explain_files(artifacts["static.onnx"], items, tmp_path / "out")
    assert [p.overlays[0].relative_to(tmp_path / "out") for p in summary.predictions] == [
        Path("overlays/a/x.jpg"),
        Path("overlays/b/x.jpg"),
    ]
    assert [p.true_label for p in summary.predictions] == ["cat", None]


_MEMORY = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {root!r})
    from pathlib import Path
    from gradcam_model.runtime import explain_files
    paths = sorted(Path({folder!r}).glob("*.jpg"))[: {count}]
    summary = explain_files({artifact!r}, paths, {out!r}, batch_size=8)
    peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    print(json.dumps({{"peak_kb": peak, "explained": summary.explained, "modules": "torch" in sys.modules}}))
    """
)


def _peak(artifact, folder, count, out) -> dict:
    code = _MEMORY.format(root=str(ROOT), folder=str(folder), count=count, artifact=str(artifact), out=str(out))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_memory_does_not_grow_with_the_image_count(artifacts, tmp_path):
    """1,000 pictures of 320x240 peak like 100 of them.

    Holding every decoded picture would add 900 x 230 KB = 207 MB, and as many overlays
    as much again. The peak (VmHWM, in fresh processes) varies by ~40 MB from run to run
    at any count here (glibc arenas of the worker threads, ONNX Runtime's arena), hence 80.
    """
    folder = tmp_path / "many"
    paths = _jpegs(folder, 1000, size=(320, 240))
    paths[500].write_bytes(b"corrupt")
    few = _peak(artifacts["static.onnx"], folder, 100, tmp_path / "few")
    many = _peak(artifacts["static.onnx"], folder, 1000, tmp_path / "many-out")
    assert few["explained"] == 100 and many["explained"] == 999
    assert not many["modules"]  # the serve side never imported torch
    growth_mb = (many["peak_kb"] - few["peak_kb"]) / 1024
    assert growth_mb < 80, (few, many)
    rows = _rows(tmp_path / "many-out")
    assert [r["path"] for r in rows] == [str(p) for p in paths]
    assert [i for i, r in enumerate(rows) if r["error"]] == [500]
