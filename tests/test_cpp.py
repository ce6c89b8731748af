"""The C++ embedding: ``cpp/gradcam_run`` built with CMake against the torch wheel's libtorch.

The program is built once per module in a temporary folder, then run on artifacts
exported here; its ``.npy`` outputs must equal the Python runtime's
(``load_explainer(path, device="cpu")``) and its failures must be one-line messages
with the documented exit codes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))

from zoo import build  # noqa: E402

from gradcam_model import OUTPUT_NAMES, GradCAMModel, export_torchscript, load_explainer  # noqa: E402

CPP = Path(__file__).resolve().parents[1] / "cpp"
SIZE = 64
NUM_CLASSES = 10
# libtorch runs the same TorchScript graph with the same kernels as torch.jit.load in
# Python; the outputs were bit-identical when measured. 1e-5 leaves room for a different
# intra-op thread split changing the order of float reductions.
ATOL = 1e-5
# exit codes of gradcam_run (cpp/gradcam_run.cpp, ExitCode)
USAGE, MISSING_FILE, BAD_ARTIFACT, BAD_INPUT, RUN_FAILED = 2, 3, 4, 5, 6


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="module")
def gradcam_run(tmp_path_factory) -> Path:
    """The program, configured and compiled with CMake in this module's own build folder."""
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    missing = [tool for tool in ("cmake", "make") if shutil.which(tool) is None] + ([] if compiler else ["g++"])
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not found: tests/test_cpp.py builds cpp/ with CMake; "
            "run scripts/setup.sh, which installs cmake, g++ and make"
        )
    build_dir = tmp_path_factory.mktemp("cpp-build")
    commands = [
        [
            "cmake",
            "-S",
            str(CPP),
            "-B",
            str(build_dir),
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
        ],
        ["cmake", "--build", str(build_dir), "-j", str(min(2, os.cpu_count() or 1))],
    ]
    start = time.perf_counter()
    for command in commands:
        result = subprocess.run(command, capture_output=True, text=True, timeout=1200)
        if result.returncode != 0:
            pytest.fail(
                f"`{' '.join(command)}` failed (exit {result.returncode}):\n{_tail(result.stdout + result.stderr)}"
            )
    print(f"built gradcam_run in {time.perf_counter() - start:.0f} s")
    program = build_dir / "gradcam_run"
    if not program.is_file():
        pytest.fail(f"the CMake build succeeded but left no {program}")
    return program


def run(program: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(program), *map(str, args)], capture_output=True, text=True, timeout=300)


def run_ok(program: Path, *args) -> subprocess.CompletedProcess:
    result = run(program, *args)
    assert result.returncode == 0, f"gradcam_run exited {result.returncode}: {result.stderr}"
    assert result.stderr == ""
    return result


def read_outputs(folder: Path) -> dict[str, np.ndarray]:
    return {name: np.load(folder / f"{name}.npy") for name in OUTPUT_NAMES}


def max_diffs(outputs: dict[str, np.ndarray], explanation) -> dict[str, float]:
    return {
        name: float(np.abs(outputs[name].astype(np.float64) - getattr(explanation, name)).max())
        for name in OUTPUT_NAMES
    }


def assert_same_as_python(outputs: dict[str, np.ndarray], explanation) -> None:
    for name in OUTPUT_NAMES:
        expected = getattr(explanation, name)
        got = outputs[name]
        assert got.dtype == expected.dtype, f"{name}: {got.dtype} != {expected.dtype}"
        assert got.shape == expected.shape, f"{name}: {got.shape} != {expected.shape}"
    np.testing.assert_array_equal(outputs["class_index"], explanation.class_index)
    for name in ("logits", "probabilities", "score", "cam"):
        np.testing.assert_allclose(outputs[name], getattr(explanation, name), rtol=0, atol=ATOL, err_msg=name)


def assert_maps_have_signal(cam: np.ndarray) -> None:
    """Normalized maps span [0, 1] and vary across the image: not flat, not all zeros."""
    assert np.isfinite(cam).all()
    assert cam.min() >= 0 and cam.max() <= 1
    flat = cam.reshape(cam.shape[0] * cam.shape[1], -1)
    assert (flat.max(axis=1) - flat.min(axis=1) > 0.99).all(), flat.max(axis=1) - flat.min(axis=1)
    assert (flat.std(axis=1) > 0.05).all(), flat.std(axis=1)


def metadata_line(stdout: str) -> dict[str, str]:
    line = next(line for line in stdout.splitlines() if line.startswith("metadata: "))
    return dict(item.split("=", 1) for item in line.removeprefix("metadata: ").split())


def images(batch: int, seed: int, size: tuple[int, int] = (SIZE, SIZE)) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, *size, generator=gen).numpy()


def save(folder: Path, name: str, array: np.ndarray) -> Path:
    path = folder / name
    np.save(path, array)
    return path


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return build("resnet18", num_classes=NUM_CLASSES)


@pytest.fixture(scope="module")
def artifacts(model, tmp_path_factory) -> dict[str, Path]:
    """Three artifacts that cover the contract's variants.

    top2: layer4 (dynamic H, W), top-2 classes, named classes;
    classes: layer4 with a class input; fixed: layer2 (static 64x64, the gradient
    crosses strided convolutions).
    """
    folder = tmp_path_factory.mktemp("artifacts")
    example = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))
    names = [f"label{i}" for i in range(NUM_CLASSES)]
    wrappers = {
        "top2": GradCAMModel(model, "layer4", example_input=example, top_k=2, class_names=names),
        "classes": GradCAMModel(model, "layer4", example_input=example, class_input=True),
        "fixed": GradCAMModel(model, "layer2", example_input=example),
    }
    assert wrappers["top2"].input_size is None and wrappers["fixed"].input_size == (SIZE, SIZE)
    return {name: export_torchscript(w, folder / f"{name}.pt", overwrite=True) for name, w in wrappers.items()}


@pytest.mark.parametrize("batch", [1, 4])
def test_matches_python_runtime(gradcam_run, artifacts, tmp_path, batch):
    x = images(batch, seed=batch)
    result = run_ok(gradcam_run, artifacts["top2"], save(tmp_path, "x.npy", x), tmp_path / "out")
    outputs = read_outputs(tmp_path / "out")
    expected = load_explainer(artifacts["top2"], device="cpu")(x)
    assert_same_as_python(outputs, expected)
    assert outputs["cam"].shape == (batch, 2, SIZE, SIZE)
    assert_maps_have_signal(outputs["cam"])
    # the program read and reported the same metadata as the Python runtime
    meta = expected.metadata
    assert metadata_line(result.stdout) == {
        "architecture": meta.architecture,
        "method": meta.method,
        "target_layer": meta.target_layer,
        "num_classes": str(meta.num_classes),
        "in_channels": str(meta.in_channels),
        "input_size": "dynamic",
        "top_k": "2",
        "class_input": "false",
        "schema_version": str(meta.schema_version),
    }
    # one line per sample, labelled with the artifact's class names
    for n, labels in enumerate(expected.labels()):
        line = next(line for line in result.stdout.splitlines() if line.startswith(f"sample {n}:"))
        assert [f"({label})" in line for label in labels] == [True, True], line


def test_dynamic_spatial_size(gradcam_run, artifacts, tmp_path):
    """An artifact with dynamic H, W runs at a size other than the export example's."""
    x = images(2, seed=11, size=(48, 80))
    run_ok(gradcam_run, artifacts["top2"], save(tmp_path, "x.npy", x), tmp_path / "out")
    outputs = read_outputs(tmp_path / "out")
    assert outputs["cam"].shape == (2, 2, 48, 80)
    assert_same_as_python(outputs, load_explainer(artifacts["top2"], device="cpu")(x))
    assert_maps_have_signal(outputs["cam"])


def test_input_layouts(gradcam_run, artifacts, tmp_path):
    """float64 Fortran-order batches and a single [C, H, W] image read like float32 C-order ones."""
    x = images(2, seed=17)
    explainer = load_explainer(artifacts["top2"], device="cpu")
    fortran = np.asfortranarray(x.astype(np.float64))  # np.save records fortran_order: True
    run_ok(gradcam_run, artifacts["top2"], save(tmp_path, "f.npy", fortran), tmp_path / "f", "--quiet")
    assert_same_as_python(read_outputs(tmp_path / "f"), explainer(x))
    run_ok(gradcam_run, artifacts["top2"], save(tmp_path, "one.npy", x[1]), tmp_path / "one", "--threads", "1")
    assert_same_as_python(read_outputs(tmp_path / "one"), explainer(x[1:]))


def test_fixed_size_artifact(gradcam_run, artifacts, tmp_path):
    x = images(3, seed=12)
    result = run_ok(gradcam_run, artifacts["fixed"], save(tmp_path, "x.npy", x), tmp_path / "out")
    assert metadata_line(result.stdout)["input_size"] == f"{SIZE}x{SIZE}"
    outputs = read_outputs(tmp_path / "out")
    assert_same_as_python(outputs, load_explainer(artifacts["fixed"], device="cpu")(x))
    assert_maps_have_signal(outputs["cam"])


def test_class_input_artifact(gradcam_run, artifacts, tmp_path):
    x = images(4, seed=13)
    classes = np.array([3, -1, 7, 0], dtype=np.int64)
    result = run_ok(
        gradcam_run, artifacts["classes"], save(tmp_path, "x.npy", x), tmp_path / "out",
        "--class-index", save(tmp_path, "classes.npy", classes),
    )  # fmt: skip
    assert metadata_line(result.stdout)["class_input"] == "true"
    outputs = read_outputs(tmp_path / "out")
    explainer = load_explainer(artifacts["classes"], device="cpu")
    assert_same_as_python(outputs, explainer(x, class_index=classes))
    top = outputs["logits"].argmax(axis=1)
    np.testing.assert_array_equal(outputs["class_index"][:, 0], np.where(classes == -1, top, classes))

    # without a class file every sample explains its top class
    run_ok(gradcam_run, artifacts["classes"], tmp_path / "x.npy", tmp_path / "top", "--quiet")
    top_outputs = read_outputs(tmp_path / "top")
    assert_same_as_python(top_outputs, explainer(x))
    np.testing.assert_array_equal(top_outputs["class_index"][:, 0], top)
    assert_maps_have_signal(top_outputs["cam"])
    # the given classes changed the maps; an unlikely class may have an all-zero map
    # (every weighted activation negative before the ReLU), so only top maps must have signal
    chosen = (classes != -1) & (classes != top)
    assert chosen.any()
    for n in np.flatnonzero(chosen):
        assert np.abs(outputs["cam"][n] - top_outputs["cam"][n]).max() > 0.1, n
    np.testing.assert_array_equal(outputs["cam"][classes == -1], top_outputs["cam"][classes == -1])

    # one int32 class for the whole batch, as numpy saves a Python int on some platforms
    run_ok(
        gradcam_run, artifacts["classes"], tmp_path / "x.npy", tmp_path / "one",
        "--class-index", save(tmp_path, "one.npy", np.array(5, dtype=np.int32)), "--quiet",
    )  # fmt: skip
    one_outputs = read_outputs(tmp_path / "one")
    assert_same_as_python(one_outputs, explainer(x, class_index=5))
    np.testing.assert_array_equal(one_outputs["class_index"], np.full((4, 1), 5))


def test_help(gradcam_run):
    result = run(gradcam_run, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: gradcam_run ARTIFACT.pt INPUT.npy OUTDIR")
    assert "exit codes:" in result.stdout


class _Plain(nn.Module):
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image * 2


@pytest.fixture(scope="module")
def bad_files(artifacts, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad")
    plain = folder / "plain.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notice
        torch.jit.save(torch.jit.script(_Plain()), str(plain))  # no gradcam.json
    garbage = folder / "garbage.pt"
    garbage.write_bytes(b"not a zip archive\n" * 10)
    text = folder / "text.npy"
    text.write_text("1 2 3\n")
    nan = images(3, seed=14)
    nan[1, 0, 5, 5] = np.nan
    return {
        **artifacts,
        "plain": plain,
        "garbage": garbage,
        "text": text,
        "good": save(folder, "good.npy", images(2, seed=15)),
        "rank2": save(folder, "rank2.npy", np.zeros((2, SIZE), dtype=np.float32)),
        "channels": save(folder, "channels.npy", np.zeros((2, 1, SIZE, SIZE), dtype=np.float32)),
        "small": save(folder, "small.npy", images(1, seed=16, size=(48, 48))),
        "int": save(folder, "int.npy", np.zeros((2, 3, SIZE, SIZE), dtype=np.int64)),
        "nan": save(folder, "nan.npy", nan),
        "class10": save(folder, "class10.npy", np.array([0, 10], dtype=np.int64)),
        "class3": save(folder, "class3.npy", np.array([0, 1, 2], dtype=np.int64)),
        "float_class": save(folder, "float_class.npy", np.array([0.0, 1.0])),
        "missing": folder / "missing.pt",
    }


# (id, arguments with {name} standing for a bad_files path, exit code, message pattern)
ERROR_CASES = [
    ("no-arguments", [], USAGE, r"expected ARTIFACT INPUT\.npy OUTDIR, got 0"),
    ("unknown-option", ["{top2}", "{good}", "{out}", "--bogus"], USAGE, r"unknown option '--bogus'"),
    ("option-without-value", ["{top2}", "{good}", "{out}", "--class-index"], USAGE, r"--class-index needs a value"),
    ("bad-threads", ["{top2}", "{good}", "{out}", "--threads", "zero"], USAGE, r"--threads must be a positive integer"),
    ("bad-device", ["{top2}", "{good}", "{out}", "--device", "tpu:x"], USAGE, r"--device must be cpu, cuda"),
    ("missing-artifact", ["{missing}", "{good}", "{out}"], MISSING_FILE, r"artifact .*missing\.pt does not exist"),
    ("missing-input", ["{top2}", "{missing}", "{out}"], MISSING_FILE, r"input .*missing\.pt does not exist"),
    ("missing-class-file", ["{classes}", "{good}", "{out}", "--class-index", "{missing}"], MISSING_FILE,
     r"class index file .* does not exist"),
    ("not-torchscript", ["{garbage}", "{good}", "{out}"], BAD_ARTIFACT, r"is not a loadable TorchScript file"),
    ("no-metadata", ["{plain}", "{good}", "{out}"], BAD_ARTIFACT, r"without gradcam_model metadata \(gradcam\.json\)"),
    ("not-npy", ["{top2}", "{text}", "{out}"], BAD_INPUT, r"is not a \.npy file"),
    ("wrong-rank", ["{top2}", "{rank2}", "{out}"], BAD_INPUT, r"images must be \[N, 3, H, W\] .*got shape \(2, 64\)"),
    ("wrong-channels", ["{top2}", "{channels}", "{out}"], BAD_INPUT, r"must have 3 channels .*\(2, 1, 64, 64\)"),
    ("wrong-spatial-size", ["{fixed}", "{small}", "{out}"], BAD_INPUT,
     r"takes 64x64 images \(fixed spatial size\), got 48x48"),
    ("integer-images", ["{top2}", "{int}", "{out}"], BAD_INPUT, r"images must be float16/32/64 .*got int64"),
    ("non-finite", ["{top2}", "{nan}", "{out}"], BAD_INPUT, r"NaN or Inf in sample\(s\) \[1\]"),
    ("class-without-class-input", ["{top2}", "{good}", "{out}", "--class-index", "{class10}"], BAD_INPUT,
     r"explains its top-2 classes and takes no class"),
    ("class-out-of-range", ["{classes}", "{good}", "{out}", "--class-index", "{class10}"], BAD_INPUT,
     r"class_index\[1\] = 10 is out of range; expected 0\.\.9"),
    ("class-wrong-length", ["{classes}", "{good}", "{out}", "--class-index", "{class3}"], BAD_INPUT,
     r"one int or \[2\] ints .*got shape \(3,\)"),
    ("float-classes", ["{classes}", "{good}", "{out}", "--class-index", "{float_class}"], BAD_INPUT,
     r"class_index must hold integers, got float64"),
    ("cuda-unavailable", ["{top2}", "{good}", "{out}", "--device", "cuda"], RUN_FAILED,
     r"CUDA is not available"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "code", "pattern"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_errors(gradcam_run, bad_files, tmp_path, args, code, pattern):
    out = tmp_path / "out"
    paths = {**bad_files, "out": out}
    result = run(gradcam_run, *(arg.format(**paths) for arg in args))
    assert result.returncode == code, f"exit {result.returncode}, stderr: {result.stderr!r}"
    assert result.stderr.endswith("\n") and result.stderr.count("\n") == 1, f"not one line: {result.stderr!r}"
    assert result.stderr.startswith("gradcam_run: error: ")
    assert re.search(pattern, result.stderr), result.stderr
    assert not out.exists(), "a failed run must write nothing"
