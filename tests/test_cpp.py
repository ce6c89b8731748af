"""The C++ library ``gradcam`` and the programs over it: ``gradcam_ort`` (ONNX Runtime) and ``gradcam_run`` (libtorch).

cpp/ is built once per module in a temporary folder and run on real image files (JPEG,
PNG, grey, RGBA, 16-bit, odd sizes). The programs' labels, probabilities, maps and network
inputs must equal the Python runtime's, their overlays the Python ``overlay()``'s, and
their failures must be one-line messages with the documented exit codes and no output
files. The library is installed to a temporary prefix and an example program is built
against it with ``find_package(gradcam)``; a test driver checks concurrent calls and bad input.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))

from zoo import build  # noqa: E402

import gradcam_model  # noqa: E402
from gradcam_model import GradCAMModel, export_onnx, export_torchscript, load_explainer  # noqa: E402
from gradcam_model.contract import GUIDED_METHODS, GUIDED_OUTPUT, output_names  # noqa: E402
from gradcam_model.runtime import explained_region, load_image, preprocess  # noqa: E402
from gradcam_model.runtime.visualize import guided_picture, overlay  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CPP = ROOT / "cpp"
# where scripts/setup.sh unpacks Debian 13's libonnxruntime-dev on a Debian 12 machine
ORT_HEADERS = ROOT / "build" / "cpp-deps" / "onnxruntime-dev" / "usr" / "include" / "onnxruntime"
SIZE = 64
NUM_CLASSES = 10
NAMES = [f"label{i}" for i in range(NUM_CLASSES)]
COLUMNS = [
    "path", "true_label", "predicted_index", "predicted_label", "probability",
    "explained_index", "explained_label", "explained_score", "region_x", "region_y", "region_w", "region_h",
    "overlay", "error",
]  # fmt: skip
OUTPUTS = ("logits", "probabilities", "class_index", "score", "cam")

# Tolerances, C++ program vs Python runtime.
# The pip OpenCV resizes float images bilinearly with Intel IPP; Debian's OpenCV (the C++
# programs) has no IPP and uses OpenCV's own code, which the pip OpenCV runs too with IPP off
# (`plain_opencv`): then the network input and the overlays are bit-identical. With IPP on, as
# the Python runtime runs by default, enlarged images differ by IPP's rounding: <= 6e-7 in the
# network input, and a map level rounded the other way now and then in an overlay, which jet
# turns into a colour step of up to 4, blended at alpha 0.4: up to 2 grey levels.
INPUT_ATOL = 1e-6
# IPP's area average (shrinking by a non-integer factor) rounds otherwise too: measured 9.3e-6 in
# the normalized input (2e-6 of a [0, 1] pixel, divided by std ~0.22) on the odd pictures.
AREA_IPP_ATOL = 2e-5
IPP_OVERLAY_LEVELS = 2
IPP_OVERLAY_PIXELS = 1e-3  # the fraction of overlay values IPP's rounding may move at all
# Probabilities through the whole default Python pipeline (IPP on): that input difference
# moved them by <= 3e-7.
PROBABILITY_ATOL = 1e-6
# Maps on the same input in the same batches: the same graph; ORT's threaded reductions alone
# differ by ~7e-7 between runs of one session.
CAM_ATOL = 1e-5
# Overlays from the same map with the same OpenCV code: identical when measured.
OVERLAY_LEVELS = 1
# A guided artifact's "guided" output (values up to ~0.13 here) on the same input in the same
# batches: the same graph, so only ORT's threaded-reduction noise (~7e-7 between runs of one
# session, as for the maps) is allowed: the 1e-6. Measured: equal.
GUIDED_ATOL = 1e-6
# guided_picture's mean and std: numpy sums float32 pairwise, the C++ library in double; the
# picture is truncated to uint8, so a value on a level boundary may land one level lower or higher,
# but only now and then: rounding instead of truncating would move about half of them.
GUIDED_LEVELS = 1
GUIDED_MOVED = 1e-3  # the fraction of picture values that may move at all (measured: none)

# exit codes (cpp/include/gradcam/error.h, ExitCode)
USAGE, MISSING_FILE, BAD_ARTIFACT, BAD_IMAGE, RUN_FAILED, WRITE_FAILED = 2, 3, 4, 5, 6, 7
PROGRAMS = ("gradcam_ort", "gradcam_run")
BATCH = 2  # over 5 pictures: three runs of one session, the last one short


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _ort_capi() -> Path:
    return Path(onnxruntime.__file__).parent / "capi"


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory) -> Path:
    """cpp/ (the library, both programs, the check driver) configured and compiled in this module's build folder."""
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    missing = [tool for tool in ("cmake", "make") if shutil.which(tool) is None] + ([] if compiler else ["g++"])
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not found: tests/test_cpp.py builds cpp/ with CMake; "
            "run scripts/setup.sh, which installs cmake, g++ and make"
        )
    if not ORT_HEADERS.is_dir() and not Path("/usr/include/onnxruntime").is_dir():
        pytest.fail(
            f"ONNX Runtime C++ headers not found in {ORT_HEADERS} or /usr/include/onnxruntime: "
            "run scripts/setup.sh, which fetches them (Debian 13's libonnxruntime-dev)"
        )
    build_dir = tmp_path_factory.mktemp("cpp-build")
    commands = [
        [
            "cmake", "-S", str(CPP), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-DONNXRUNTIME_LIBRARY_DIR={_ort_capi()}", "-DGRADCAM_INSTALL_ORT_PROVIDERS=OFF",
        ],
        ["cmake", "--build", str(build_dir), "-j", str(min(2, os.cpu_count() or 1))],
    ]  # fmt: skip
    start = time.perf_counter()
    for command in commands:
        result = subprocess.run(command, capture_output=True, text=True, timeout=1200)
        if result.returncode != 0:
            pytest.fail(
                f"`{' '.join(command)}` failed (exit {result.returncode}); scripts/setup.sh installs OpenCV, "
                f"nlohmann-json and the ONNX Runtime headers:\n{_tail(result.stdout + result.stderr)}"
            )
    print(f"built the library, gradcam_ort and gradcam_run in {time.perf_counter() - start:.0f} s")
    return build_dir


@pytest.fixture(scope="module")
def programs(build_dir) -> dict[str, Path]:
    """Both programs from the module's build."""
    paths = {name: build_dir / name for name in PROGRAMS}
    for path in paths.values():
        if not path.is_file():
            pytest.fail(f"the CMake build succeeded but left no {path}")
    return paths


def run(program: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(program), *map(str, args)], capture_output=True, text=True, timeout=300)


def run_ok(program: Path, *args) -> subprocess.CompletedProcess:
    result = run(program, *args)
    assert result.returncode == 0, f"{program.name} exited {result.returncode}: {result.stderr}"
    assert result.stderr == ""
    return result


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    """resnet18 layer4 (dynamic H, W) as ONNX and TorchScript: top-2 with class names, and with a class input."""
    folder = tmp_path_factory.mktemp("artifacts")
    model = build("resnet18", num_classes=NUM_CLASSES)
    example = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))
    top2 = GradCAMModel(model, "layer4", example_input=example, top_k=2, class_names=NAMES)
    classes = GradCAMModel(model, "layer4", example_input=example, class_input=True, class_names=NAMES)
    return {
        ("gradcam_ort", "top2"): export_onnx(top2, folder / "top2.onnx", overwrite=True),
        ("gradcam_ort", "classes"): export_onnx(classes, folder / "classes.onnx", overwrite=True),
        ("gradcam_run", "top2"): export_torchscript(top2, folder / "top2.pt", overwrite=True),
        ("gradcam_run", "classes"): export_torchscript(classes, folder / "classes.pt", overwrite=True),
    }


@pytest.fixture(scope="module")
def guided_artifacts(tmp_path_factory) -> dict[str, Path]:
    """resnet18 layer4 guided Grad-CAM, top-2 with class names, per program: six outputs, the sixth ``guided``."""
    folder = tmp_path_factory.mktemp("guided")
    model = build("resnet18", num_classes=NUM_CLASSES)
    example = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))
    wrapper = GradCAMModel(model, "layer4", method="guided-gradcam", example_input=example, top_k=2, class_names=NAMES)
    return {
        "gradcam_ort": export_onnx(wrapper, folder / "guided.onnx", overwrite=True),
        "gradcam_run": export_torchscript(wrapper, folder / "guided.pt", overwrite=True),
    }


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> list[Path]:
    """Image files as a service gets them: photos shrunk, a small one enlarged, grey, RGBA, a repeated name."""
    from skimage import data

    folder = tmp_path_factory.mktemp("pictures")
    chelsea, coffee = data.chelsea(), data.coffee()  # RGB uint8
    alpha = np.linspace(0, 255, chelsea.shape[1], dtype=np.uint8)[None].repeat(chelsea.shape[0], 0)
    files = {
        "chelsea.jpg": cv2.cvtColor(chelsea, cv2.COLOR_RGB2BGR),
        "coffee.png": cv2.cvtColor(coffee[100:150, 200:240], cv2.COLOR_RGB2BGR),  # 50x40: enlarged
        "camera.png": data.camera(),  # grayscale
        "rgba.png": np.dstack([cv2.cvtColor(chelsea, cv2.COLOR_RGB2BGR), alpha]),
        "sub/chelsea.png": cv2.cvtColor(chelsea[:, 100:], cv2.COLOR_RGB2BGR),  # same stem as chelsea.jpg
    }
    paths = []
    for name, image in files.items():
        path = folder / name
        path.parent.mkdir(exist_ok=True)
        assert cv2.imwrite(str(path), image)
        paths.append(path)
    return paths


@contextmanager
def plain_opencv():
    """The pip OpenCV without Intel IPP, computing what Debian's OpenCV computes; restored after."""
    before = cv2.ipp.useIPP()
    cv2.ipp.setUseIPP(False)
    try:
        yield
    finally:
        cv2.ipp.setUseIPP(before)


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def read_tensors(folder: Path, *, guided: bool = False) -> dict[str, np.ndarray]:
    names = ("image", *OUTPUTS, *((GUIDED_OUTPUT,) if guided else ()))
    return {name: np.load(folder / "tensors" / f"{name}.npy") for name in names}


def explainer_for(program: str, path: Path):
    if program == "gradcam_ort":
        return load_explainer(path, providers=["CPUExecutionProvider"])
    return load_explainer(path, device="cpu")


@pytest.mark.parametrize("program", PROGRAMS)
def test_matches_python_runtime(programs, artifacts, pictures, tmp_path, program):
    out = tmp_path / "out"
    result = run_ok(
        programs[program], artifacts[program, "top2"], *pictures, "--out", out, "--batch-size", BATCH, "--save-tensors"
    )
    explainer = explainer_for(program, artifacts[program, "top2"])
    rgbs = [load_image(p) for p in pictures]
    x = np.stack([preprocess(rgb, explainer.metadata) for rgb in rgbs])
    tensors = read_tensors(out)

    # the same network input as the Python runtime (grey expanded, alpha dropped, resized, normalized)
    with plain_opencv():
        np.testing.assert_array_equal(tensors["image"], np.stack([preprocess(rgb, explainer.metadata) for rgb in rgbs]))
    np.testing.assert_allclose(tensors["image"], x, rtol=0, atol=INPUT_ATOL)
    python = explainer(x)  # the whole Python pipeline, as deployed
    np.testing.assert_array_equal(tensors["class_index"], python.class_index)
    np.testing.assert_allclose(tensors["probabilities"], python.probabilities, rtol=0, atol=PROBABILITY_ATOL)
    np.testing.assert_allclose(tensors["score"], python.score, rtol=0, atol=PROBABILITY_ATOL)
    # the same input in the same batches: libtorch's convolutions pick other kernels for a
    # batch of 1 than of 5, which moves maps by ~1e-5
    chunks = [explainer(tensors["image"][i : i + BATCH]) for i in range(0, len(pictures), BATCH)]
    same_input = {name: np.concatenate([getattr(c, name) for c in chunks]) for name in OUTPUTS}
    for name in ("logits", "probabilities", "score", "cam"):
        np.testing.assert_allclose(tensors[name], same_input[name], rtol=0, atol=CAM_ATOL, err_msg=name)
    assert tensors["cam"].shape == (len(pictures), 2, SIZE, SIZE)
    print(
        f"{program}: input {np.abs(tensors['image'] - x).max():.1e} (IPP), probabilities "
        f"{np.abs(tensors['probabilities'] - python.probabilities).max():.1e}, maps "
        f"{np.abs(tensors['cam'] - same_input['cam']).max():.1e} (same input)"
    )

    # predictions.csv: `gradcam explain`'s columns, one row per picture, in order
    columns, rows = read_csv(out / "predictions.csv")
    assert columns == COLUMNS
    assert [row["path"] for row in rows] == [str(p) for p in pictures]
    for i, row in enumerate(rows):
        top = int(python.probabilities[i].argmax())
        assert (row["predicted_index"], row["predicted_label"]) == (str(top), NAMES[top])
        # the program's own probability printed with 6 decimals (its distance to Python's is checked above;
        # comparing the rounded text with Python's value would add up to 5e-7 of rounding to that distance)
        assert row["probability"] == f"{float(tensors['probabilities'][i, top]):.6f}"
        assert row["explained_index"] == ";".join(map(str, python.class_index[i]))
        assert row["explained_label"] == ";".join(python.labels()[i])
        assert row["true_label"] == "" and row["error"] == ""
        region = explained_region(rgbs[i].shape, explainer.metadata)
        assert [row[f"region_{c}"] for c in "xywh"] == [f"{v:.2f}" for v in region]
        overlays = row["overlay"].split(";")
        stem = "chelsea-2" if i == 4 else pictures[i].stem
        assert overlays == [str(out / "overlays" / f"{stem}.png"), str(out / "overlays" / f"{stem}-top2.png")]
        for k, path in enumerate(overlays):
            # the Python overlay() of the same picture and map
            got = cv2.cvtColor(cv2.imread(path, cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB).astype(int)
            assert got.shape == rgbs[i].shape
            with plain_opencv():
                assert np.abs(got - overlay(rgbs[i], tensors["cam"][i, k])).max() <= OVERLAY_LEVELS, path
            diff = np.abs(got - overlay(rgbs[i], tensors["cam"][i, k]))
            assert diff.max() <= IPP_OVERLAY_LEVELS and (diff > 0).mean() <= IPP_OVERLAY_PIXELS, path
    assert sorted(p.name for p in out.iterdir()) == ["overlays", "predictions.csv", "tensors"]  # no staging, no guided/
    assert not (out / "tensors" / f"{GUIDED_OUTPUT}.npy").exists()  # a gradcam artifact has no guided output
    assert result.stdout.splitlines()[-1].startswith("explained 5 of 5 images on cpu")


@pytest.mark.parametrize("program", PROGRAMS)
def test_class_input(programs, artifacts, pictures, tmp_path, program):
    """--class by name explains that class for every picture, as the Python runtime with class_index."""
    path = artifacts[program, "classes"]
    out = tmp_path / "out"
    run_ok(
        programs[program], path, *pictures[:3], "--out", out, "--class", "label3", "--alpha", 0.7, "--threads", 1,
        "--save-tensors", "--quiet",
    )  # fmt: skip
    tensors = read_tensors(out)
    expected = explainer_for(program, path)(tensors["image"], class_index=3)
    np.testing.assert_array_equal(tensors["class_index"], np.full((3, 1), 3))
    np.testing.assert_allclose(tensors["cam"], expected.cam, rtol=0, atol=CAM_ATOL)
    _, rows = read_csv(out / "predictions.csv")
    assert [row["explained_label"] for row in rows] == ["label3"] * 3
    with plain_opencv():
        for i, row in enumerate(rows):
            got = cv2.cvtColor(cv2.imread(row["overlay"]), cv2.COLOR_BGR2RGB).astype(int)
            expected_overlay = overlay(load_image(pictures[i]), tensors["cam"][i, 0], alpha=0.7)
            assert np.abs(got - expected_overlay).max() <= OVERLAY_LEVELS


def _guided_file(out: Path, picture: Path, i: int, k: int) -> Path:
    stem = "chelsea-2" if i == 4 else picture.stem  # the pictures fixture repeats the name chelsea
    return out / "guided" / (f"{stem}.png" if k == 0 else f"{stem}-top{k + 1}.png")


def _read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB).astype(int)


@pytest.mark.parametrize("program", PROGRAMS)
def test_guided_output_and_pictures_equal_python(programs, guided_artifacts, pictures, tmp_path, program):
    """A guided-gradcam artifact: its sixth output equals the Python runtime's on the same inputs in the same
    batches, and guided/<overlay name> is Python's ``guided_picture`` of it, as ``gradcam explain`` writes."""
    from pytorch_grad_cam.utils.image import deprocess_image

    out = tmp_path / "out"
    run_ok(programs[program], guided_artifacts[program], *pictures, "--out", out, "--batch-size", BATCH,
           "--save-tensors", "--quiet")  # fmt: skip
    tensors = read_tensors(out, guided=True)
    explainer = explainer_for(program, guided_artifacts[program])
    assert output_names(explainer.metadata.method)[-1] == GUIDED_OUTPUT
    chunks = [explainer(tensors["image"][i : i + BATCH]) for i in range(0, len(pictures), BATCH)]
    python = {name: np.concatenate([getattr(c, name) for c in chunks]) for name in ("class_index", "cam", "guided")}
    np.testing.assert_array_equal(tensors["class_index"], python["class_index"])
    np.testing.assert_allclose(tensors["cam"], python["cam"], rtol=0, atol=CAM_ATOL)
    assert tensors["guided"].shape == python["guided"].shape == (len(pictures), 2, 3, SIZE, SIZE)
    assert np.abs(python["guided"]).max() > 1e3 * GUIDED_ATOL  # a gradient the tolerance can tell from another
    np.testing.assert_allclose(tensors["guided"], python["guided"], rtol=0, atol=GUIDED_ATOL)

    order = explainer.metadata.preprocessing.channel_order
    worst = moved = 0
    for i, picture in enumerate(pictures):
        for k in range(2):
            got = _read_rgb(_guided_file(out, picture, i, k))
            expected = guided_picture(python["guided"][i, k], channel_order=order).astype(int)
            assert got.shape == (SIZE, SIZE, 3) and len(np.unique(got)) > 32  # a picture, not a flat grey
            assert np.abs(got - expected).max() <= GUIDED_LEVELS
            assert np.abs(got - deprocess_image(python["guided"][i, k].transpose(1, 2, 0))).max() <= GUIDED_LEVELS
            worst, moved = max(worst, np.abs(got - expected).max()), moved + int((got != expected).sum())
    assert moved <= GUIDED_MOVED * tensors["guided"].size
    assert sorted(p.name for p in out.iterdir()) == ["guided", "overlays", "predictions.csv", "tensors"]
    assert len(list((out / "guided").iterdir())) == len(list((out / "overlays").iterdir())) == 2 * len(pictures)
    print(f"{program}: guided {np.abs(tensors['guided'] - python['guided']).max():.1e} from Python (same input), "
          f"pictures {worst} level(s) off at {moved} values")  # fmt: skip


def test_guided_picture_follows_a_bgr_input(programs, guided_artifacts, pictures, tmp_path):
    """A BGR network input: the guided picture's channels are reversed to RGB, as Python's ``guided_picture``."""
    record = json.loads(load_explainer(guided_artifacts["gradcam_ort"], providers=["CPUExecutionProvider"])
                        .metadata.to_json())  # fmt: skip
    record["preprocessing"]["channel_order"] = "BGR"
    artifact = _edit_metadata("gradcam_ort", guided_artifacts["gradcam_ort"], tmp_path / "bgr.onnx", json.dumps(record))
    out = tmp_path / "out"
    run_ok(programs["gradcam_ort"], artifact, pictures[0], "--out", out, "--save-tensors", "--quiet")
    guided = read_tensors(out, guided=True)["guided"][0, 0]
    got = _read_rgb(_guided_file(out, pictures[0], 0, 0))
    assert np.abs(got - guided_picture(guided, channel_order="BGR")).max() <= GUIDED_LEVELS
    assert np.abs(got - guided_picture(guided, channel_order="RGB")).max() > 16  # the order matters on this picture


@pytest.mark.parametrize("program", PROGRAMS)
def test_failed_commit_keeps_an_existing_folder_as_it_was(programs, artifacts, pictures, tmp_path, program):
    """Files move into DIR only at the end; a failure there leaves DIR's older files untouched."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.csv").write_text("an older run\n")
    (out / "overlays").write_text("a file where the overlays folder goes\n")
    result = run(programs[program], artifacts[program, "top2"], pictures[1], "--out", out, "--quiet")
    assert result.returncode == WRITE_FAILED, result.stderr
    assert result.stderr.startswith(f"{program}: error: cannot write ") and result.stderr.count("\n") == 1
    assert sorted(p.name for p in out.iterdir()) == ["overlays", "predictions.csv"]  # no staging folder left
    assert (out / "predictions.csv").read_text() == "an older run\n"


@pytest.mark.parametrize("program", PROGRAMS)
def test_unreadable_image_is_reported_and_skipped(programs, artifacts, pictures, tmp_path, program):
    """As `gradcam explain`: the other pictures are explained, the CSV row holds the error; exit 5."""
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(pictures[0].read_bytes()[:200])  # a JPEG header and nothing else
    out = tmp_path / "out"
    result = run(programs[program], artifacts[program, "top2"], corrupt, pictures[1], "--out", out, "--quiet")
    assert result.returncode == BAD_IMAGE, result.stderr
    assert (
        result.stderr
        == f"{program}: skipped: {corrupt}: not a readable image (expected PNG, JPEG, BMP, TIFF or WebP)\n"
    )
    _, rows = read_csv(out / "predictions.csv")
    assert rows[0]["error"].startswith(f"{corrupt}: not a readable image") and rows[0]["predicted_index"] == ""
    assert rows[1]["error"] == "" and rows[1]["predicted_label"] in NAMES
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["coffee-top2.png", "coffee.png"]


@pytest.mark.parametrize("program", PROGRAMS)
def test_help(programs, program):
    result = run(programs[program], "--help")
    assert result.returncode == 0
    assert result.stdout.startswith(f"usage: {program} ARTIFACT")
    assert "exit codes:" in result.stdout


class _Plain(nn.Module):
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image * 2


def _edit_metadata(program: str, source: Path, target: Path, text: str) -> Path:
    """A copy of an artifact whose gradcam.json is ``text``."""
    if program == "gradcam_ort":
        model = onnx.load(str(source))
        for prop in model.metadata_props:
            if prop.key == "gradcam.json":
                prop.value = text
        onnx.save(model, str(target))
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notice
            module = torch.jit.load(str(source))
            torch.jit.save(module, str(target), _extra_files={"gradcam.json": text})
    return target


@pytest.fixture(scope="module")
def bad_files(artifacts, guided_artifacts, pictures, tmp_path_factory) -> dict[tuple[str, str], Path]:
    folder = tmp_path_factory.mktemp("bad")
    files = dict(artifacts)

    def record_of(path: Path) -> str:
        return load_explainer(path, providers=["CPUExecutionProvider"]).metadata.to_json()

    record, guided_record = record_of(artifacts["gradcam_ort", "top2"]), record_of(guided_artifacts["gradcam_ort"])
    assert '"method": "guided-gradcam"' in guided_record
    for program, suffix in (("gradcam_ort", ".onnx"), ("gradcam_run", ".pt")):
        source = artifacts[program, "top2"]
        truncated = folder / f"truncated{suffix}"
        data = source.read_bytes()
        truncated.write_bytes(data[: len(data) // 2])
        files[program, "truncated"] = truncated
        files[program, "malformed"] = _edit_metadata(program, source, folder / f"malformed{suffix}", record[:-20])
        files[program, "incomplete"] = _edit_metadata(
            program, source, folder / f"incomplete{suffix}", record.replace('"example_size"', '"example_sizes"')
        )
        assert '"schema_version": 2' in record and '"resize": "stretch"' in record
        files[program, "newer"] = _edit_metadata(
            program, source, folder / f"newer{suffix}", record.replace('"schema_version": 2', '"schema_version": 99')
        )
        # preprocessing this version cannot apply: refused naming the field, never approximated
        files[program, "lanczos"] = _edit_metadata(
            program, source, folder / f"lanczos{suffix}",
            record.replace('"interpolation": "area"', '"interpolation": "lanczos"'),
        )  # fmt: skip
        files[program, "padding"] = _edit_metadata(
            program,
            source,
            folder / f"padding{suffix}",
            record.replace('"resize": "stretch"', '"pad": 4, "resize": "stretch"'),
        )
        # outputs off the contract for the recorded method: five for a guided method, six for another
        assert '"method": "gradcam"' in record
        for method in GUIDED_METHODS:
            files[program, f"as_{method.replace('-', '_')}"] = _edit_metadata(
                program, source, folder / f"as-{method}{suffix}",
                record.replace('"method": "gradcam"', f'"method": "{method}"'),
            )  # fmt: skip
        files[program, "guided_as_gradcam"] = _edit_metadata(
            program, guided_artifacts[program], folder / f"guided-as-gradcam{suffix}",
            guided_record.replace('"method": "guided-gradcam"', '"method": "gradcam"'),
        )  # fmt: skip
    plain = folder / "plain.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(_Plain()), str(plain))
    files["gradcam_run", "nometa"] = plain
    plain_onnx = onnx.load(str(artifacts["gradcam_ort", "top2"]))
    del plain_onnx.metadata_props[:]
    onnx.save(plain_onnx, str(folder / "plain.onnx"))
    files["gradcam_ort", "nometa"] = folder / "plain.onnx"
    (folder / "empty").mkdir()
    (folder / "empty" / "notes.txt").write_text("not a picture\n")
    not_a_folder = folder / "file"
    not_a_folder.write_text("a file, so no folder can be made under it\n")
    for program in PROGRAMS:
        files[program, "image"] = pictures[0]
        files[program, "missing"] = folder / "missing.png"
        files[program, "empty"] = folder / "empty"
        files[program, "unwritable"] = not_a_folder / "out"
    return files


# (id, arguments: {name} stands for a bad_files entry of the program, {out} for the output folder;
#  exit code, message pattern). Every case fails before anything is written.
ERROR_CASES = [
    ("no-arguments", [], USAGE, r"expected ARTIFACT and at least one IMAGE"),
    ("no-out", ["{top2}", "{image}"], USAGE, r"--out DIR is required"),
    ("unknown-option", ["{top2}", "{image}", "--out", "{out}", "--bogus"], USAGE, r"unknown option '--bogus'"),
    ("option-without-value", ["{top2}", "{image}", "--out", "{out}", "--class"], USAGE, r"--class needs a value"),
    ("bad-alpha", ["{top2}", "{image}", "--out", "{out}", "--alpha", "2"], USAGE, r"--alpha must be in \[0, 1\]"),
    ("bad-batch-size", ["{top2}", "{image}", "--out", "{out}", "--batch-size", "0"], USAGE, r"--batch-size must be"),
    ("missing-artifact", ["{missing}", "{image}", "--out", "{out}"], MISSING_FILE,
     r"artifact .*missing\.png does not exist"),
    ("empty-folder", ["{top2}", "{empty}", "--out", "{out}"], MISSING_FILE,
     r"folder .*empty holds no images \(\.png, "),
    ("truncated-artifact", ["{truncated}", "{image}", "--out", "{out}"], BAD_ARTIFACT,
     r"truncated\.\w+ is not a loadable"),
    ("no-metadata", ["{nometa}", "{image}", "--out", "{out}"], BAD_ARTIFACT,
     r"without gradcam_model metadata \(gradcam\.json\)"),
    ("malformed-metadata", ["{malformed}", "{image}", "--out", "{out}"], BAD_ARTIFACT,
     r"the gradcam metadata is not valid JSON"),
    ("incomplete-metadata", ["{incomplete}", "{image}", "--out", "{out}"], BAD_ARTIFACT,
     r"metadata lacks 'example_size'"),
    ("newer-metadata", ["{newer}", "{image}", "--out", "{out}"], BAD_ARTIFACT, r"schema version 99 is newer"),
    ("unknown-interpolation", ["{lanczos}", "{image}", "--out", "{out}"], BAD_ARTIFACT,
     r"cannot apply the recorded preprocessing: interpolation \"lanczos\" \(expected one of: nearest, bilinear"),
    ("unknown-preprocessing-field", ["{padding}", "{image}", "--out", "{out}"], BAD_ARTIFACT,
     r"cannot apply the recorded preprocessing: unknown field 'pad' = 4"),
    # gradcam_ort: "has ... outputs [logits, ..., cam]; expected ... for method M (it lacks [guided])";
    # gradcam_run: "forward returns 5 outputs; the contract for method M has 6 (logits, ..., guided)"
    ("five-outputs-as-guided-gradcam", ["{as_guided_gradcam}", "{image}", "--out", "{out}"], BAD_ARTIFACT,
     r"for method guided-gradcam (\(it lacks \[guided\]\)|has 6 \(logits, .*, cam, guided\))$"),
    ("five-outputs-as-guided-backprop", ["{as_guided_backprop}", "{image}", "--out", "{out}"], BAD_ARTIFACT,
     r"for method guided-backprop (\(it lacks \[guided\]\)|has 6 \(logits, .*, cam, guided\))$"),
    ("six-outputs-as-gradcam", ["{guided_as_gradcam}", "{image}", "--out", "{out}"], BAD_ARTIFACT,
     r"(outputs \[logits, .*, cam, guided\]; expected \[image\] and \[logits, .*, cam\]|forward returns 6 "
     r"outputs; the contract) for method gradcam"),
    ("class-out-of-range", ["{classes}", "{image}", "--out", "{out}", "--class", "10"], USAGE,
     r"--class 10 is out of range; expected 0\.\.9 or -1"),
    ("unknown-class-name", ["{classes}", "{image}", "--out", "{out}", "--class", "zebra"], USAGE,
     r"--class 'zebra' is not a class of this artifact"),
    ("class-without-class-input", ["{top2}", "{image}", "--out", "{out}", "--class", "3"], USAGE,
     r"--class needs an artifact exported with --class-input; .* explains its top-2 classes"),
    ("unwritable-output", ["{top2}", "{image}", "--out", "{unwritable}"], WRITE_FAILED,
     r"cannot create output folder .*file/out"),
]  # fmt: skip
CUDA_CASE = (
    "cuda-unavailable",
    ["{top2}", "{image}", "--out", "{out}", "--cuda"],
    RUN_FAILED,
    r"CUDA is not available",
)


def _error_cases():
    for program in PROGRAMS:
        cases = list(ERROR_CASES)
        # gradcam_run is built without CUDA here; gradcam_ort only fails where no GPU is usable
        if program == "gradcam_run" or not torch.cuda.is_available():
            cases.append(CUDA_CASE)
        for name, args, code, pattern in cases:
            yield pytest.param(program, args, code, pattern, id=f"{program}-{name}")


@pytest.mark.parametrize(("program", "args", "code", "pattern"), list(_error_cases()))
def test_errors(programs, bad_files, tmp_path, program, args, code, pattern):
    out = tmp_path / "out"
    paths = {key: path for (prog, key), path in bad_files.items() if prog == program}
    result = run(programs[program], *(arg.format(**paths, out=out) for arg in args))
    assert result.returncode == code, f"exit {result.returncode}, stderr: {result.stderr!r}"
    assert result.stderr.endswith("\n") and result.stderr.count("\n") == 1, f"not one line: {result.stderr!r}"
    assert result.stderr.startswith(f"{program}: error: ")
    assert re.search(pattern, result.stderr), result.stderr
    assert not out.exists(), "a failed run must write nothing"


def _marked_blocks(source: str) -> list[str]:
    """The code between ``// [docs:NAME]`` and ``// [docs:end]`` markers, dedented."""
    blocks = re.findall(r"// \[docs:(?!end)\w+\]\n(.*?)\n\s*// \[docs:end\]", source, flags=re.S)
    return [textwrap.dedent(block) for block in blocks]


@pytest.mark.parametrize(
    ("source", "count"),
    [("src/onnxruntime.cpp", 3), ("programs/gradcam_run.cpp", 2), ("examples/explain_pictures.cpp", 1)],
)
def test_docs_show_the_compiled_code(source, count):
    """docs/embedding.md shows the library and engine calls exactly as the compiled sources make them."""
    blocks = _marked_blocks((CPP / source).read_text())
    assert len(blocks) == count
    docs = (ROOT / "docs" / "embedding.md").read_text()
    shown = re.findall(r"```cpp\n(.*?)```", docs, flags=re.S)
    for block in blocks:
        assert any(block.strip() in snippet for snippet in shown), f"docs/embedding.md lacks:\n{block}"


# Recorded preprocessings the programs apply, as (id, preprocessing fields, example_size). The
# artifact's H, W are dynamic, so the example size is the input size: 64x64 (square: the shorter
# side gets floor(64 / crop_pct) or resize_size) or 48x64 (timm's ResizeKeepRatio to cover it).
PREPROCESSING_CASES = [
    ("timm-bicubic-crop", {"resize": "shorter", "crop_pct": 0.875, "interpolation": "bicubic"}, [SIZE, SIZE]),
    ("torchvision-bilinear-resize-size", {"resize": "shorter", "resize_size": 73, "interpolation": "bilinear"},
     [SIZE, SIZE]),
    ("bilinear-no-antialias-bgr", {"resize": "shorter", "crop_pct": 0.9, "interpolation": "bilinear",
                                   "antialias": False,
                                   "channel_order": "BGR", "scale": 1.0}, [SIZE, SIZE]),
    ("nearest-stretch-crop", {"resize": "stretch", "crop_pct": 0.8, "interpolation": "nearest"}, [SIZE, SIZE]),
    ("bicubic-non-square", {"resize": "shorter", "crop_pct": 0.95, "interpolation": "bicubic"}, [48, SIZE]),
    ("area-crop", {"resize": "shorter", "crop_pct": 0.875, "interpolation": "area"}, [SIZE, SIZE]),
]  # fmt: skip


@pytest.fixture(scope="module")
def odd_pictures(tmp_path_factory) -> list[Path]:
    """Files of odd sizes and kinds: tall, wide, tiny, grey, RGBA, 16-bit, and a photo."""
    from skimage import data

    folder = tmp_path_factory.mktemp("odd")
    rng = np.random.default_rng(0)
    smooth = cv2.resize(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8), (300, 300), interpolation=cv2.INTER_CUBIC)
    chelsea = cv2.cvtColor(data.chelsea(), cv2.COLOR_RGB2BGR)
    alpha = np.linspace(0, 255, chelsea.shape[1], dtype=np.uint8)[None].repeat(chelsea.shape[0], 0)
    files = {
        "tall.png": cv2.resize(smooth, (40, 400)),
        "wide.png": cv2.resize(smooth, (400, 40)),
        "tiny.png": smooth[:7, :5],
        "grey.png": data.camera(),
        "rgba.png": np.dstack([chelsea, alpha]),
        "deep.png": (cv2.resize(smooth, (90, 70)).astype(np.uint16) * 257 + np.uint16(97)),  # 16 bits per channel
        "chelsea.jpg": chelsea,
    }
    paths = []
    for name, image in files.items():
        assert cv2.imwrite(str(folder / name), image)
        paths.append(folder / name)
    return paths


@pytest.mark.parametrize(("fields", "example_size"), [c[1:] for c in PREPROCESSING_CASES],
                         ids=[c[0] for c in PREPROCESSING_CASES])  # fmt: skip
def test_recorded_preprocessing_equals_python(programs, artifacts, odd_pictures, tmp_path, fields, example_size):
    """The C++ network input and explained region equal Python's ``preprocess`` and ``explained_region``.

    Nearest, bilinear and bicubic are Pillow's integer arithmetic on 8-bit pixels in both
    languages (the same weights, sums and rounding): bit-identical. "area" is OpenCV's float
    resize: bit-identical with IPP off, within IPP's rounding (INPUT_ATOL) with it on.
    """
    record = json.loads(
        load_explainer(artifacts["gradcam_ort", "top2"], providers=["CPUExecutionProvider"]).metadata.to_json()
    )
    record["preprocessing"].update(fields)
    record["example_size"] = example_size
    artifact = _edit_metadata(
        "gradcam_ort", artifacts["gradcam_ort", "top2"], tmp_path / "prep.onnx", json.dumps(record)
    )
    out = tmp_path / "out"
    run_ok(programs["gradcam_ort"], artifact, *odd_pictures, "--out", out, "--save-tensors", "--quiet")
    meta = load_explainer(artifact, providers=["CPUExecutionProvider"]).metadata
    assert meta.preprocessing.interpolation == fields["interpolation"] and list(meta.example_size) == example_size
    rgbs = [load_image(p) for p in odd_pictures]
    got = read_tensors(out)["image"]
    assert got.shape == (len(odd_pictures), 3, *example_size)
    with plain_opencv():
        expected = np.stack([preprocess(rgb, meta) for rgb in rgbs])
    if fields["interpolation"] == "area":
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_allclose(got, np.stack([preprocess(rgb, meta) for rgb in rgbs]), rtol=0, atol=AREA_IPP_ATOL)
    else:
        np.testing.assert_array_equal(got, expected)  # Pillow's integer arithmetic: no tolerance
    _, rows = read_csv(out / "predictions.csv")
    cams = read_tensors(out)["cam"]
    for i, (rgb, row) in enumerate(zip(rgbs, rows, strict=True)):
        region = explained_region(rgb.shape, meta)
        assert [row[f"region_{c}"] for c in "xywh"] == [f"{v:.2f}" for v in region]
        # the map lies on the crop's pixels, the rest dimmed, as the Python overlay draws it
        drawn = cv2.cvtColor(cv2.imread(row["overlay"].split(";")[0]), cv2.COLOR_BGR2RGB).astype(int)
        with plain_opencv():
            assert np.abs(drawn - overlay(rgb, cams[i, 0], region=region)).max() <= OVERLAY_LEVELS, row["path"]


@pytest.fixture(scope="module")
def example(build_dir, tmp_path_factory) -> Path:
    """cpp/examples built out of tree against the library installed (cmake --install) to a temporary prefix."""
    prefix, example_build = tmp_path_factory.mktemp("prefix"), tmp_path_factory.mktemp("example-build")
    commands = [
        ["cmake", "--install", str(build_dir), "--prefix", str(prefix)],
        ["cmake", "-S", str(CPP / "examples"), "-B", str(example_build), f"-DCMAKE_PREFIX_PATH={prefix}"],
        ["cmake", "--build", str(example_build)],
    ]
    for command in commands:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"`{' '.join(command)}` failed:\n{_tail(result.stdout + result.stderr)}"
    version = (prefix / "include" / "gradcam" / "version.h").read_text()
    assert f'#define GRADCAM_VERSION "{gradcam_model.__version__}"' in version  # versioned with the Python package
    assert (prefix / "lib" / "cmake" / "gradcam" / "gradcamConfig.cmake").is_file()
    return example_build / "explain_pictures"


def test_installed_library_example_matches_python(example, artifacts, pictures, tmp_path):
    """The example consumer (find_package(gradcam) only): the Python runtime's classes, and maps on the same inputs."""
    out = tmp_path / "out"
    out.mkdir()
    result = subprocess.run([str(example), str(artifacts["gradcam_ort", "top2"]), str(out), *map(str, pictures)],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0 and result.stderr == "", result.stderr
    explainer = explainer_for("gradcam_ort", artifacts["gradcam_ort", "top2"])
    shape = (3, SIZE, SIZE)
    inputs = np.stack([np.fromfile(out / f"{i}.input.f32", np.float32).reshape(shape) for i in range(len(pictures))])
    with plain_opencv():
        np.testing.assert_array_equal(
            inputs, np.stack([preprocess(load_image(p), explainer.metadata) for p in pictures])
        )
    python = explainer(inputs)  # the same inputs in one batch, as the example ran them
    maps = np.stack(
        [np.fromfile(out / f"{i}.maps.f32", np.float32).reshape(2, SIZE, SIZE) for i in range(len(pictures))]
    )
    # ORT's threaded reductions differ by ~7e-7 between runs of one session: within the 1e-6
    np.testing.assert_allclose(maps, python.cam, rtol=0, atol=1e-6)
    lines = result.stdout.splitlines()
    assert len(lines) == len(pictures)
    for i, (line, path) in enumerate(zip(lines, pictures, strict=True)):
        top = int(python.probabilities[i].argmax())
        assert line.startswith(f"{path}: {NAMES[top]} ") and f"explained {python.labels()[i][0]} (" in line
        assert (out / f"{i}.png").is_file()
    print(f"example: maps {np.abs(maps - python.cam).max():.1e} from Python on the same inputs")


def _check(build_dir: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(build_dir / "gradcam_library_check"), *map(str, args)], capture_output=True, text=True,
                          timeout=600)  # fmt: skip


def test_library_concurrent_calls_equal_serial(build_dir, artifacts, pictures):
    """4 threads x 50 explain() calls on one Explainer give bit-identical results to serial calls."""
    start = time.perf_counter()
    result = _check(build_dir, "threads", artifacts["gradcam_ort", "top2"], *pictures)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "threads: 4 x 50 calls identical to serial\n"
    print(f"threads: {time.perf_counter() - start:.1f} s")


@pytest.mark.parametrize("kind", ["gradcam", "guided-gradcam"])
def test_library_buffers_and_tensors_equal_pictures(build_dir, artifacts, guided_artifacts, pictures, kind):
    """RGB, BGR, RGBA buffers, a BGRA cv::Mat and the ready tensor explain as the BGR cv::Mat does.

    The guided output included: [K, 3, H, W] for a guided artifact, none for another."""
    guided = kind == "guided-gradcam"
    artifact = guided_artifacts["gradcam_ort"] if guided else artifacts["gradcam_ort", "top2"]
    result = _check(build_dir, "forms", artifact, pictures[0])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("forms: 4 buffers and a tensor identical to the cv::Mat")
    assert result.stdout.endswith(f"; guided 2 x 3 x {SIZE} x {SIZE}\n" if guided else "; no guided output\n")


# (case of cpp/tests/library_check.cpp, code, message pattern): on the class-input artifact
LIBRARY_ERRORS = [
    ("missing-artifact", MISSING_FILE, r"^artifact no/such/model\.onnx does not exist$"),
    ("corrupt-artifact", BAD_ARTIFACT, r"chelsea\.jpg is not a loadable ONNX model: "),
    ("not-a-picture", BAD_IMAGE, r"classes\.onnx: not a readable image \(expected PNG, JPEG"),
    ("missing-picture", MISSING_FILE, r"^no/such/picture\.png: no such image file$"),
    ("empty-picture", BAD_IMAGE, r"^picture 0 is empty; expected an 8-bit picture$"),
    ("16-bit-picture", BAD_IMAGE,
     r"^picture 1 is 8x8 with 3 channel\(s\) of depth CV_16U; expected 8-bit \(CV_8U\) pixels$"),
    ("two-channel-buffer", BAD_IMAGE, r"^buffer 0 has 2 channels; expected 1, 3 or 4$"),
    ("short-stride-buffer", BAD_IMAGE,
     r"^buffer 0 has a stride of 5 bytes; expected at least cols \* channels = 1353$"),
    ("truncated-buffer", BAD_IMAGE,
     r"^buffer 0 holds 405899 bytes; a 451x300 picture of 3 channels with a stride of 1353 needs 405900$"),
    ("null-buffer", BAD_IMAGE, r"^buffer 0 is empty \(0x0\); expected pixels of at least 1x1$"),
    ("class-out-of-range", USAGE, r"^class 10 is out of range; expected 0\.\.9 or -1 \(top class\)$"),
    ("classes-per-picture", USAGE, r"^1 classes for 2 pictures; expected one per picture$"),
    ("no-tensors", BAD_IMAGE, r"^no inputs to explain \(n = 0\); expected at least 1$"),
    ("overlay-class", USAGE, r"^map 9 asked for; this explanation has 1$"),
    ("no-guided-output", USAGE, r"^this explanation has no guided output: only guided-backprop and guided-gradcam "
                                r"artifacts give one, this one's method is gradcam$"),
    ("guided-channel-order", USAGE, r'^channel order "RGBA"; expected RGB or BGR \(the metadata.s preprocessing\)$'),
    ("empty-guided", USAGE, r"^a guided image of 0x7; expected a \[3, H, W\] gradient image of at least 1x1$"),
]  # fmt: skip


def test_library_bad_input_raises_one_line_and_stays_usable(build_dir, artifacts, pictures):
    """Each bad input: a gradcam::Error with the documented code and one line; the same result after it."""
    result = _check(build_dir, "errors", artifacts["gradcam_ort", "classes"], pictures[0])
    assert result.returncode == 0, result.stdout + result.stderr
    *cases, last = result.stdout.splitlines()
    assert last == "usable after every error"
    assert [c.split("\t")[0] for c in cases] == [name for name, _, _ in LIBRARY_ERRORS]
    for line, (_, code, pattern) in zip(cases, LIBRARY_ERRORS, strict=True):
        _, got_code, message = line.split("\t")
        assert int(got_code) == code, line
        assert re.search(pattern, message), line


def test_programs_take_folders_and_carry_on_past_missing_files(programs, artifacts, pictures, tmp_path):
    """Folders as `gradcam explain` lists them (extensions, order, names, ImageFolder labels).

    A missing file is a row with its error."""
    from gradcam_model.runtime.inputs import collect_images

    root = tmp_path / "photos"
    for rel, source in [("b/x.png", 1), ("a-b.png", 2), ("a/y.JPG", 0), ("B.png", 1), ("a/z/w.png", 2)]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(pictures[source], root / rel)
    (root / "notes.txt").write_text("not a picture\n")
    missing = tmp_path / "gone.png"
    out = tmp_path / "out"
    for program in PROGRAMS:
        result = run(
            programs[program], artifacts[program, "top2"], root, missing, pictures[1], "--out", out / program, "--quiet"
        )
        assert result.returncode == BAD_IMAGE, result.stderr
        assert result.stderr == f"{program}: skipped: {missing}: no such image file\n"
        _, rows = read_csv(out / program / "predictions.csv")
        expected = collect_images([root]) + [None] + collect_images([pictures[1]])
        assert [row["path"] for row in rows] == [str(e.path) if e else str(missing) for e in expected]
        assert [row["true_label"] for row in rows] == [(e.label or "") if e else "" for e in expected]
        assert rows[5]["error"] == f"{missing}: no such image file" and rows[5]["predicted_index"] == ""
        for row, e in zip(rows, expected, strict=True):
            if e is not None:
                assert row["overlay"].split(";")[0] == str(out / program / "overlays" / f"{e.key}.png")
                assert Path(row["overlay"].split(";")[0]).is_file()


def test_large_pictures_are_decoded_reduced_as_gradcam_explain_does(programs, artifacts, tmp_path):
    """Over 2048 px on the long side: a large JPEG decoded at a DCT scale, any picture shrunk.

    As decode_image's max_side does."""
    from gradcam_model.runtime.images import DEFAULT_MAX_SIDE

    rng = np.random.default_rng(0)
    photo = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (4000, 3000), interpolation=cv2.INTER_CUBIC)
    photo = np.clip(photo.astype(np.int16) + rng.integers(-30, 31, photo.shape, dtype=np.int16), 0, 255).astype(
        np.uint8
    )
    files = [tmp_path / "photo.jpg", tmp_path / "wide.png"]
    assert cv2.imwrite(str(files[0]), photo, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert cv2.imwrite(str(files[1]), photo[:1000, :3000])
    assert files[0].stat().st_size >= 2_000_000  # the size from which decode_image probes a reduced JPEG
    out = tmp_path / "out"
    run_ok(programs["gradcam_ort"], artifacts["gradcam_ort", "top2"], *files, "--out", out, "--save-tensors", "--quiet")
    meta = load_explainer(artifacts["gradcam_ort", "top2"], providers=["CPUExecutionProvider"]).metadata
    rgbs = [load_image(p, max_side=DEFAULT_MAX_SIDE) for p in files]
    assert [rgb.shape[:2] for rgb in rgbs] == [(1536, 2048), (683, 2048)]
    got = read_tensors(out)["image"]
    with plain_opencv():
        np.testing.assert_array_equal(got, np.stack([preprocess(rgb, meta) for rgb in rgbs]))
    np.testing.assert_allclose(got, np.stack([preprocess(rgb, meta) for rgb in rgbs]), rtol=0, atol=AREA_IPP_ATOL)
    _, rows = read_csv(out / "predictions.csv")
    for rgb, row in zip(rgbs, rows, strict=True):
        assert [row[f"region_{c}"] for c in "xywh"] == [f"{v:.2f}" for v in explained_region(rgb.shape, meta)]
