"""The ``gradcam`` command, run in-process through ``main(argv)`` (plus one subprocess smoke test)."""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from zoo import build

from gradcam_model import list_layers, load_explainer
from gradcam_model.cli import main
from gradcam_model.runtime import load_image, preprocess

CLASSES = ["cat", "dog", "bird"]
SIZE = ["--input-size", "64", "64"]


def run(argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)`` with stdout/stderr captured (for module-scoped fixtures, where capsys is unavailable)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def _save_rgb(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A trained-looking resnet18 (3 classes) as a DataParallel checkpoint, its artifacts and some images.

    ``top2.onnx`` is exported through the CLI (top-2, class names); ``classin.pt`` through the
    CLI with a class input and a zero cam tolerance, so that its parity check fails (exit 1).
    """
    root = tmp_path_factory.mktemp("cli")
    model = build("resnet18", num_classes=3)
    ckpt = root / "ckpt.pth"
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    names = root / "classes.txt"
    names.write_text("\n".join(CLASSES) + "\n")
    common = ["--arch", "resnet18", "--weights", ckpt, "--num-classes", "3", "--class-names", names]
    common += ["--target-layer", "layer4", *SIZE]
    onnx_run = run(["export", *common, "--top-k", "2", "--format", "onnx", "--name", "top2", "--out", root / "onnx"])
    ts_run = run(
        ["export", *common, "--class-input", "--format", "torchscript,onnx", "--name", "classin", "--out", root / "ts"]
        + ["--cam-atol", "0", "--noise-factor", "0"]  # ONNX Runtime's float rounding differs from torch's
    )
    import skimage.data

    photos = root / "photos"
    small = {name: cv2.resize(getattr(skimage.data, name)(), (96, 72)) for name in ("chelsea", "coffee", "astronaut")}
    _save_rgb(photos / "cat" / "chelsea.png", small["chelsea"])
    _save_rgb(photos / "dog" / "coffee.jpg", small["coffee"])
    _save_rgb(photos / "bird" / "astronaut.png", small["astronaut"])
    (photos / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    (photos / "notes.txt").write_text("not an image, not collected")
    not_a_dir = root / "plain-file"
    not_a_dir.write_text("x")
    garbage = root / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01 not a protobuf")
    legacy_ckpt = root / "legacy.pt"  # torch.save's pre-zip format
    torch.save(model.state_dict(), legacy_ckpt, _use_new_zipfile_serialization=False)
    garbage_pt = root / "garbage.pt"
    garbage_pt.write_bytes(b"PK not a zip")
    return SimpleNamespace(
        root=root,
        model=model,
        ckpt=ckpt,
        names=names,
        onnx=root / "onnx" / "top2.onnx",
        pt=root / "ts" / "classin.pt",
        onnx_run=onnx_run,
        ts_run=ts_run,
        photos=photos,
        not_a_dir=not_a_dir,
        garbage=garbage,
        garbage_pt=garbage_pt,
        legacy_ckpt=legacy_ckpt,
    )


# ---------------------------------------------------------------------------- export


def test_export_writes_artifacts_and_a_parity_report(ws):
    code, out, err = ws.onnx_run
    assert code == 0, err
    assert err == ""
    assert ws.onnx.is_file()
    assert "built resnet18 gradcam at 'layer4': 3 classes, top-2" in out
    assert "parity of top2.onnx: ok" in out
    assert "cam" in out and "class agreement" in out
    report = json.loads((ws.onnx.parent / "parity.json").read_text())
    assert report["ok"] is True
    [entry] = report["artifacts"]
    assert entry["format"] == "onnx" and entry["ok"] is True
    assert entry["outputs"]["cam"]["max_abs"] <= entry["tolerance"]["cam_atol"]
    meta = load_explainer(ws.onnx).metadata
    assert (meta.architecture, meta.target_layer, meta.top_k, meta.class_input) == ("resnet18", "layer4", 2, False)
    assert meta.class_names == tuple(CLASSES)


def test_export_exits_1_when_parity_fails(ws):
    code, out, err = ws.ts_run
    assert code == 1
    assert ws.pt.is_file() and ws.pt.with_suffix(".onnx").is_file()  # written, then checked
    assert "parity of classin.onnx: FAILED" in out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gradcam: parity check failed for") and "cam: max_abs" in lines[0]
    assert "classin.onnx" in lines[0]
    report = json.loads((ws.pt.parent / "parity.json").read_text())
    assert report["ok"] is False
    entries = {entry["format"]: entry for entry in report["artifacts"]}
    assert not entries["onnx"]["ok"] and entries["onnx"]["outputs"]["cam"]["max_abs"] > 0
    assert all(entry["tolerance"]["cam_atol"] == 0 for entry in entries.values())


def test_export_refuses_to_overwrite_without_the_flag(ws, capsys):
    before = ws.onnx.read_bytes()
    code = main(["export", "--arch", "resnet18", "--num-classes", "3", *SIZE, "--format", "onnx"]
                + ["--name", "top2", "--out", str(ws.onnx.parent)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == f"gradcam: error: {ws.onnx} already exists; pass --overwrite to replace it"
    assert ws.onnx.read_bytes() == before


# ---------------------------------------------------------------------------- validate


def test_validate_reads_architecture_and_classes_from_the_artifact(ws, capsys, tmp_path):
    report = tmp_path / "report.json"
    code = main(["validate", str(ws.onnx), "--weights", str(ws.ckpt), "--json", str(report)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"parity of {ws.onnx} (onnx, resnet18 gradcam at 'layer4'):" in out
    assert "\nok\n" in out
    data = json.loads(report.read_text())
    assert data["ok"] is True and data["format"] == "onnx"
    assert data["class_agreement"] == 1.0 and data["cam_signal"] > 0


def test_validate_class_input_torchscript_artifact(ws, capsys):
    code = main(["validate", str(ws.pt), "--arch", "resnet18", "--weights", str(ws.ckpt), "--json", "-"])
    out, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads(out[out.index("{") :])
    assert data["ok"] is True and data["format"] == "torchscript"


def test_validate_exits_1_beyond_tolerance(ws, capsys):
    code = main(
        [
            "validate",
            str(ws.onnx),
            "--weights",
            str(ws.ckpt),
            "--cam-atol",
            "0",
            "--logits-rtol",
            "0",
            "--noise-factor",
            "0",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 1
    assert "FAILED: logits: max_rel" in out  # ONNX Runtime's kernels never match eager bit for bit
    assert err == ""


def test_validate_against_other_weights(ws, capsys, tmp_path):
    other = tmp_path / "other.pth"
    torch.save(build("resnet18", num_classes=3, seed=5).state_dict(), other)  # same shapes, other outputs
    code = main(["validate", str(ws.onnx), "--weights", str(other)])
    out, _ = capsys.readouterr()
    assert code == 1 and "FAILED" in out
    code = main(["validate", str(ws.onnx), "--weights", str(ws.ckpt), "--num-classes", "5"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == (
        f"gradcam: error: weights {ws.ckpt} do not fit ResNet: 2 shape mismatches, checkpoint vs model "
        "(fc.weight (3, 512) vs (5, 512), fc.bias (3,) vs (5,)); check the architecture and the number of "
        "classes (CLI: --arch, --num-classes)"
    )


def test_factory_from_the_current_folder_round_trip(capsys, tmp_path, monkeypatch):
    """`--arch module:factory` imports from the working folder; validate rebuilds it from the metadata."""
    (tmp_path / "cli_factory_net.py").write_text(
        "from torch import nn\n\n"
        "def build(num_classes=4):\n"
        "    return nn.Sequential(\n"
        "        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2), nn.ReLU(),\n"
        "        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes),\n"
        "    )\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # main() adds the working folder; undo afterwards
    monkeypatch.delitem(sys.modules, "cli_factory_net", raising=False)
    spec = importlib.util.spec_from_file_location("factory_copy", tmp_path / "cli_factory_net.py")
    copy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copy)
    torch.manual_seed(0)
    torch.save(copy.build().state_dict(), tmp_path / "net.pth")  # the "trained" weights
    argv = ["export", "--arch", "cli_factory_net:build", "--weights", "net.pth", "--target-layer", "2"]
    code = main([*argv, "--input-size", "32", "32", "--format", "torchscript", "--out", "art"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "built cli_factory_net:build gradcam at '2': 4 classes" in out
    # no --arch: the factory recorded in the artifact, called without num_classes
    code = main(["validate", "art/build.pt", "--weights", "net.pth"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "(torchscript, cli_factory_net:build gradcam at '2')" in out
    # a factory may load its own weights, so --weights is optional; its head must still fit
    code = main(["validate", "art/build.pt", "--num-classes", "5"])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "gradcam: error: the model has 5 classes but art/build.pt was exported with 4; "
        "check --arch, --num-classes and --weights"
    )


# ---------------------------------------------------------------------------- explain


def test_explain_a_folder_with_a_corrupt_image(ws, capsys, tmp_path):
    out_dir = tmp_path / "explained"
    code = main(["explain", str(ws.onnx), str(ws.photos), "--out", str(out_dir), "--batch-size", "2"])
    out, err = capsys.readouterr()
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("gradcam: skipped:") and "broken.png" in lines[0]
    assert lines[1] == "gradcam: 1 of 4 inputs could not be explained"
    assert "Traceback" not in err
    assert "explained 3 of 4 images with resnet18 gradcam at 'layer4'" in out

    with open(out_dir / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [Path(r["path"]).name for r in rows] == ["astronaut.png", "broken.png", "chelsea.png", "coffee.jpg"]
    assert [r["true_label"] for r in rows] == ["bird", "cat", "cat", "dog"]
    broken = rows[1]
    assert "not a readable image" in broken["error"] and broken["predicted_label"] == ""

    # the numbers are the artifact's, on the artifact's own preprocessing
    explainer = load_explainer(ws.onnx)
    for row in (rows[0], rows[2], rows[3]):
        assert row["error"] == ""
        result = explainer(preprocess(load_image(row["path"]), explainer.metadata))
        top = int(result.probabilities[0].argmax())
        assert int(row["predicted_index"]) == top and row["predicted_label"] == CLASSES[top]
        assert float(row["probability"]) == pytest.approx(float(result.probabilities[0, top]), abs=1e-6)
        assert row["explained_index"] == ";".join(str(int(c)) for c in result.class_index[0])
        assert row["explained_label"].count(";") == 1  # top-2

        overlays = [Path(p) for p in row["overlay"].split(";")]
        assert len(overlays) == 2 and overlays[1].name.endswith("-top2.jpg")  # JPEG by default
        for picture_path in overlays:
            picture = cv2.imread(str(picture_path))
            assert picture is not None and picture.shape == (72, 96, 3)  # the input's own size
        assert overlays[0].is_relative_to(out_dir / "overlays")

    grid = cv2.imread(str(out_dir / "grid.png"))
    assert grid is not None and grid.shape[1] > 3 * 96 and grid.shape[0] > 72


def test_explain_files_with_a_class_by_name_and_by_index(ws, capsys, tmp_path):
    files = [str(ws.photos / "cat" / "chelsea.png"), str(ws.photos / "dog" / "coffee.jpg")]
    for choice, index in (("dog", 1), ("BIRD", 2), ("0", 0)):
        out_dir = tmp_path / f"class-{choice}"
        code = main(["explain", str(ws.pt), *files, "--out", str(out_dir), "--class", choice, "--colormap", "viridis"])
        _, err = capsys.readouterr()
        assert code == 0, err
        assert err == ""
        with open(out_dir / "predictions.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert [r["explained_index"] for r in rows] == [str(index)] * 2
        assert [r["true_label"] for r in rows] == ["", ""]  # single files: no folder layout
        assert sorted(p.name for p in (out_dir / "overlays").iterdir()) == ["chelsea.jpg", "coffee.jpg"]


def _crc_broken_png(path: Path) -> Path:
    """A PNG whose image data fails its CRC: libpng prints its own error line for it."""
    ok, data = cv2.imencode(".png", np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    raw = bytearray(data.tobytes())
    raw[60:80] = b"x" * 20
    path.write_bytes(bytes(raw))
    return path


def test_native_library_lines_stay_off_stderr(ws, capfd, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    _save_rgb(photos / "good.png", np.full((40, 40, 3), 100, np.uint8))
    _crc_broken_png(photos / "crc.png")
    code = main(["explain", str(ws.onnx), str(photos), "--out", str(tmp_path / "out")])
    out, err = capfd.readouterr()
    assert code == 1
    assert "libpng" not in err and "WARN" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("gradcam: skipped:") and "crc.png" in lines[0]
    assert lines[1] == "gradcam: 1 of 2 inputs could not be explained"


def test_summary_names_no_overlay_folder_when_nothing_succeeded(ws, capsys, tmp_path):
    out_dir = tmp_path / "out"
    code = main(["explain", str(ws.onnx), str(ws.photos / "cat" / "broken.png"), "--out", str(out_dir)])
    out, err = capsys.readouterr()
    assert code == 1
    assert "explained 0 of 1 images" in out and "overlays" not in out
    assert f"{out_dir / 'predictions.csv'}" in out
    assert not (out_dir / "overlays").exists()


def test_explain_png_overlays_and_the_provider(ws, capsys, tmp_path):
    code = main(["explain", str(ws.onnx), str(ws.photos / "dog"), "--out", str(tmp_path), "--overlay-format", "png"])
    out, _ = capsys.readouterr()
    assert code == 0
    assert [p.suffix for p in (tmp_path / "overlays").rglob("*") if p.is_file()] == [".png", ".png"]  # top-2
    assert "on CPUExecutionProvider" in out


def test_version(capsys):
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"gradcam {version('gradcam_model')}\n"


@pytest.mark.parametrize(
    ("command", "flag", "default"),
    [
        ("export", "--top-k", "(default: 1)"),
        ("export", "--cam-atol", "(default: 0.0001)"),
        ("validate", "--cam-atol", "(default: 0.0001)"),
        ("explain", "--alpha", "(default: 0.4)"),
        ("explain", "--overlay-format", "(default, fast)"),
        ("demo", "--alpha", "(default: 0.4)"),
    ],
)
def test_help_shows_defaults(capsys, command, flag, default):
    assert main([command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    entry = text.split(f" {flag} ", 1)[1].split(" --", 1)[0]
    assert default in entry, entry


def test_explain_top_class_by_default_with_a_class_input_artifact(ws, capsys, tmp_path):
    code = main(["explain", str(ws.pt), str(ws.photos / "cat"), "--out", str(tmp_path)])
    capsys.readouterr()
    assert code == 1  # broken.png
    with open(tmp_path / "predictions.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if not r["error"]]
    assert rows and all(r["explained_index"] == r["predicted_index"] for r in rows)


def test_the_summary_says_how_many_pictures_the_grid_shows(ws, capsys, tmp_path, monkeypatch):
    import gradcam_model.runtime.pipeline as pipeline

    argv = ["explain", str(ws.onnx), str(ws.photos), "--out"]
    assert main([*argv, str(tmp_path / "all")]) == 1
    assert f"{tmp_path / 'all' / 'grid.png'} (every picture)" in capsys.readouterr().out
    monkeypatch.setattr(pipeline, "GRID_LIMIT", 2)  # the grid's limit (64) at the size of this test
    assert main([*argv, str(tmp_path / "two")]) == 1
    out = capsys.readouterr().out
    assert f"{tmp_path / 'two' / 'grid.png'} (the first 2 of 3 pictures)" in out
    grid = cv2.imread(str(tmp_path / "two" / "grid.png"))
    assert grid.shape[1] < 3 * 256  # two cells wide, not three


def test_a_gif_is_read_as_its_first_frame_in_files_and_folders(ws, capsys, tmp_path):
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    first = cv2.resize(load_image(ws.photos / "cat" / "chelsea.png"), (64, 48))
    second = np.ascontiguousarray(first[::-1])
    frames = [Image.fromarray(f).quantize(colors=256, method=Image.Quantize.MEDIANCUT) for f in (first, second)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    frame0 = load_image(folder / "anim.gif")  # OpenCV's first frame (the GIF's palette)
    assert frame0.shape == (48, 64, 3)
    cv2.imwrite(str(folder / "frame0.png"), cv2.cvtColor(frame0, cv2.COLOR_RGB2BGR))  # lossless copy
    code = main(["explain", str(ws.onnx), str(folder), str(folder / "anim.gif"), "--out", str(tmp_path / "out")])
    capsys.readouterr()
    assert code == 0
    with open(tmp_path / "out" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    gifs = [r for r in rows if r["path"].endswith(".gif")]
    [png] = [r for r in rows if r["path"].endswith("frame0.png")]
    assert len(gifs) == 2 and len(rows) == 3
    for gif in gifs:  # found in the folder scan and given as a file: the same first frame
        assert gif["error"] == ""
        assert (gif["predicted_index"], gif["probability"]) == (png["predicted_index"], png["probability"])


def test_build_side_names_name_the_extra_without_torch():
    """gradcam_model.<build-side name> on an install without torch: our ImportError naming [export]."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import gradcam_model as gc\n"
        "for name in ('GradCAMModel', 'export_onnx', 'validate', 'list_layers', 'reference_cam', 'export'):\n"
        "    try:\n"
        "        getattr(gc, name)\n"
        "    except ImportError as exc:\n"
        "        print(type(exc).__name__, isinstance(exc, gc.GradCAMError), exc)\n"
        "from gradcam_model import load_explainer\n"
        "print('runtime', callable(load_explainer))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "runtime True" and len(lines) == 7
    for line, name in zip(lines, ("GradCAMModel", "export_onnx", "validate", "list_layers", "reference_cam", "export"),
                          strict=False):  # fmt: skip
        assert line == (
            f"MissingExtraError True gradcam_model.{name} is build side and needs torch, which this install lacks "
            '(the base install runs artifacts only): pip install "gradcam_model[export]"'
        )


def test_printed_commands_work_as_printed_without_the_venv_on_path(tmp_path):
    """The demo's closing hint: `gradcam` when it is on PATH, else a path to the script that runs from here."""
    import os

    script = Path(sys.executable).with_name("gradcam")
    code = "from gradcam_model.cli._common import runnable_command; print(runnable_command())"
    for path, expected in ((f"{script.parent}{os.pathsep}/usr/bin:/bin", "gradcam"), ("/usr/bin:/bin", None)):
        env = {**os.environ, "PATH": path}
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env,
                              cwd=tmp_path)  # fmt: skip
        command = done.stdout.strip()
        assert done.returncode == 0 and (expected is None or command == expected), done
        if expected is None:
            assert Path(command).resolve() == script.resolve()
        ran = subprocess.run(f"{command} --version", shell=True, capture_output=True, text=True, timeout=60,
                             env=env, cwd=tmp_path)  # fmt: skip
        assert ran.returncode == 0 and ran.stdout.startswith("gradcam "), ran


# ---------------------------------------------------------------------------- layers


def test_layers_lists_candidates_with_shapes(ws, capsys):
    code = main(["layers", "--arch", "resnet18", "--num-classes", "3", "--weights", str(ws.ckpt), *SIZE])
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    lines = out.splitlines()
    row = next(line for line in lines if line[2:].split()[0] == "layer4")
    assert row[2:].split()[1:4] == ["Sequential", "512x2x2", "1"]
    row = next(line for line in lines if line[2:].split()[0] == "layer2")
    assert "128x8x8" in row
    # the marked layer is the one list_layers picks
    infos = list_layers(ws.model, torch.randn(1, 3, 64, 64))
    auto = [i.name for i in infos if i.auto]
    marked = [line[2:].split()[0] for line in lines if line.startswith("* ") and not line.startswith("* auto")]
    assert marked == auto == ["layer4"]
    assert (f"* auto: --target-layer auto picks {auto[0]!r}" in out) if auto else ("no automatic choice" in out)


def test_layers_marks_the_automatic_choice_on_a_timm_model(capsys):
    code = main(["layers", "--arch", "timm:efficientnet_lite0", "--num-classes", "10", *SIZE])
    out, _ = capsys.readouterr()
    assert code == 0
    assert [line.split()[1] for line in out.splitlines() if line.startswith("* ")] == ["bn2", "auto:"]
    assert "* auto: --target-layer auto picks 'bn2'" in out


# ---------------------------------------------------------------------------- user errors


USER_ERRORS = [
    ("unknown-arch", lambda w: ["layers", "--arch", "resnt18"], r"unknown architecture 'resnt18' \(did you mean"),
    (
        "unknown-layer",
        lambda w: (
            ["export", "--arch", "resnet18", "--num-classes", "3", *SIZE, "--target-layer", "layer9"]
            + ["--out", w.root / "never"]
        ),
        r"layer 'layer9' not found in the model\. Did you mean 'layer4'",
    ),
    (
        "unknown-method",
        lambda w: ["export", "--arch", "resnet18", "--method", "gradcam+++", "--out", w.root / "never"],
        r"unknown method 'gradcam\+\+\+'; expected one of: gradcam, gradcam\+\+",
    ),
    (
        "missing-weights",
        lambda w: ["layers", "--arch", "resnet18", "--weights", w.root / "missing.pth"],
        r"weights file .*missing\.pth does not exist",
    ),
    (
        "not-a-checkpoint",
        lambda w: ["layers", "--arch", "resnet18", "--weights", w.names],
        r"classes\.txt is not a PyTorch checkpoint",
    ),
    (
        "mismatched-keys",
        lambda w: ["layers", "--arch", "resnet18", "--weights", w.ckpt],  # 3-class checkpoint, 1000-class model
        r"do not fit ResNet: 2 shape mismatches, checkpoint vs model \(fc\.weight \(3, 512\) vs \(1000, 512\)",
    ),
    (
        "missing-artifact",
        lambda w: ["validate", w.root / "missing.onnx", "--arch", "resnet18"],
        r"artifact .*missing\.onnx does not exist",
    ),
    (
        "missing-artifact-explain",
        lambda w: ["explain", w.root / "missing.pt", w.photos, "--out", w.root / "never"],
        r"artifact .*missing\.pt does not exist",
    ),
    (
        "unreadable-onnx",
        lambda w: ["explain", w.garbage, w.photos, "--out", w.root / "never"],
        r"garbage\.onnx is not a loadable ONNX model",
    ),
    (
        "checkpoint-as-artifact-explain",
        lambda w: ["explain", w.ckpt, w.photos, "--out", w.root / "never"],
        r"ckpt\.pth is a PyTorch checkpoint, not an exported artifact; export it with gradcam export",
    ),
    (
        "checkpoint-as-artifact-validate",
        lambda w: ["validate", w.legacy_ckpt, "--arch", "resnet18"],
        r"legacy\.pt is a PyTorch checkpoint, not an exported artifact; export it with gradcam export",
    ),
    (
        "unreadable-torchscript",
        lambda w: ["explain", w.garbage_pt, w.photos, "--out", w.root / "never"],
        r"garbage\.pt is not a loadable TorchScript file",
    ),
    ("not-an-artifact", lambda w: ["validate", w.names], r"classes\.txt: unknown artifact type '\.txt'"),
    (
        "unwritable-out-explain",
        lambda w: ["explain", w.onnx, w.photos, "--out", w.not_a_dir / "sub"],
        r"cannot create output folder .*plain-file/sub: .*plain-file is not a directory",
    ),
    (
        "unwritable-out-export",
        lambda w: ["export", "--arch", "resnet18", "--out", w.not_a_dir / "sub"],
        r"cannot create output folder .*plain-file/sub",
    ),
    (
        "class-on-top-k-artifact",
        lambda w: ["explain", w.onnx, w.photos, "--out", w.root / "never", "--class", "cat"],
        r"--class needs an artifact exported with --class-input; .*top2\.onnx explains its top-2 classes",
    ),
    (
        "unknown-class-name",
        lambda w: ["explain", w.pt, w.photos, "--out", w.root / "never", "--class", "dgo"],
        r"--class 'dgo' is not a class of this artifact \(did you mean 'dog'\?\)",
    ),
    (
        "class-out-of-range",
        lambda w: ["explain", w.pt, w.photos, "--out", w.root / "never", "--class", "3"],
        r"--class 3 is out of range; expected 0\.\.2 or -1",
    ),
    (
        "missing-input",
        lambda w: ["explain", w.onnx, w.root / "nope.png", "--out", w.root / "never"],
        r"input .*nope\.png does not exist",
    ),
    (
        "empty-folder",
        lambda w: ["explain", w.onnx, w.root / "onnx", "--out", w.root / "never"],
        r"folder .*onnx holds no images",
    ),
    (
        "class-input-with-top-k",
        lambda w: ["export", "--arch", "resnet18", "--class-input", "--top-k", "2", "--out", w.root / "never"],
        r"--class-input explains one given class",
    ),
    (
        "class-names-count",
        lambda w: (
            ["export", "--arch", "resnet18", "--class-names", w.names, "--target-layer", "layer4", *SIZE]
            + ["--out", w.root / "never"]
        ),
        r"class_names has 3 entries but the model has 1000 classes",
    ),
    (
        "validate-without-weights",  # a random-weight resnet18 is no reference: refused, not "FAILED"
        lambda w: ["validate", w.onnx],
        r"validate needs the trained weights .*top2\.onnx was exported from: pass --weights FILE",
    ),
    (
        "input-too-small-layers",
        lambda w: ["layers", "--arch", "vgg19", "--num-classes", "3", "--input-size", "16", "16"],
        r"input 16x16 is too small for this model: the feature map reaching 'features\.36' \(MaxPool2d\) is only "
        r"512x1x1; the smallest input of this aspect ratio that works is about 32x32",
    ),
    (
        "input-too-small-export",
        lambda w: ["export", "--arch", "inception_v3", "--num-classes", "3", *SIZE, "--out", w.root / "never"],
        r"input 64x64 is too small for this model: .* is only 192x2x2; .* about 75x75: use a larger input size",
    ),
    (
        "attention-internal-layer",
        lambda w: [
            "export",
            "--arch",
            "timm:vit_tiny_patch16_224",
            "--num-classes",
            "3",
            "--input-size",
            "224",
            "224",
            "--target-layer",
            "blocks.11.attn.k_norm",
            "--out",
            w.root / "never",
        ],  # fmt: skip
        r"layer 'blocks\.11\.attn\.k_norm' cannot be explained: it is computed inside 'blocks' \(Sequential\), "
        r"which takes 197x192 tokens",
    ),
    (
        "missing-class-names",
        lambda w: ["export", "--arch", "resnet18", "--class-names", w.root / "nope.txt", "--out", w.root / "never"],
        r"cannot read class names from .*nope\.txt: No such file or directory",
    ),
]


@pytest.mark.parametrize("runtime", [None, "onnxruntime", "onnx-reference", "openvino"])
def test_validate_exits_4_when_the_runtime_cannot_load_the_artifact(ws, capsys, runtime):
    if runtime == "openvino":
        pytest.importorskip("openvino")  # [dev] installs it
    code = main(["validate", str(ws.garbage), "--arch", "resnet18", *(["--runtime", runtime] if runtime else [])])
    out, err = capsys.readouterr()
    assert code == 4 and out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gradcam: error: "), err
    assert "garbage.onnx" in lines[0] and ("cannot load" in lines[0] or "is not a loadable ONNX model" in lines[0])


@pytest.mark.parametrize(("argv", "match"), [pytest.param(a, m, id=i) for i, a, m in USER_ERRORS])
def test_user_errors_exit_2_with_one_line(ws, capsys, argv, match):
    code = main([str(a) for a in argv(ws)])
    out, err = capsys.readouterr()
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("gradcam: error: ")
    assert re.search(match, lines[0]), lines[0]
    assert "Traceback" not in err
    assert not (ws.root / "never").exists()


def test_verbose_shows_the_traceback_and_info_logs(capsys):
    code = main(["-v", "layers", "--arch", "resnt18"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("Traceback") and "ArchitectureError" in err
    assert err.strip().splitlines()[-1].startswith("gradcam: error: unknown architecture")
    code = main(["layers", "--arch", "resnet18", "--num-classes", "2", "--input-size", "32", "32", "--verbose"])
    err = capsys.readouterr().err
    assert code == 0
    assert "INFO gradcam_model.models: built resnet18 (2 classes)" in err


def test_usage_errors_and_help(capsys):
    assert main(["export", "--out", "x"]) == 2  # --arch missing
    err = capsys.readouterr().err
    assert err.startswith("usage: gradcam export") and "the following arguments are required: --arch" in err
    assert main(["export", "--arch", "resnet18", "--out", "x", "--format", "onnx,tflite"]) == 2
    assert "unknown format 'tflite'" in capsys.readouterr().err
    assert main(["explain", "a.onnx", "b.png", "--out", "x", "--batch-size", "0"]) == 2
    assert "expected a positive integer" in capsys.readouterr().err
    assert main([]) == 2
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("layers", "export", "validate", "explain", "demo"):
        assert command in out
    assert ("bench" in out) == (importlib.util.find_spec("gradcam_model.bench") is not None)


# ---------------------------------------------------------------------------- the installed script


def test_installed_script_smoke():
    script = Path(sys.executable).with_name("gradcam")
    assert script.is_file(), "pip install -e . creates the gradcam console script"
    done = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "usage: gradcam" in done.stdout and "explain" in done.stdout
    done = subprocess.run(
        [script, "layers", "--arch", "resnet18", "--num-classes", "4", "--input-size", "32", "32"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert any(line.split()[:3] == ["layer4", "Sequential", "512x1x1"] for line in done.stdout.splitlines())
    done = subprocess.run(
        [sys.executable, "-m", "gradcam_model", "layers", "--arch", "resnt18"], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr.startswith("gradcam: error: unknown architecture 'resnt18'") and done.stderr.count("\n") == 1


def test_verbose_names_the_execution_provider(ws, capsys, tmp_path):
    code = main(["explain", "-v", str(ws.onnx), str(ws.photos / "dog"), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 0
    assert "INFO gradcam_model.runtime.explainer: top2.onnx runs on CPUExecutionProvider" in err
