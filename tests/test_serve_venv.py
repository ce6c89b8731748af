"""A fresh venv holding only the built wheel (no torch anywhere): the serve side works and matches the dev venv.

The wheel is built from a copy of this tree (``pip wheel --no-deps``, what a release would
publish) and installed with the same pins as the dev venv; the README's install-size figure
is measured from that venv. The venv is built under the temp folder once per version of the
code and pyproject.toml (their hash names it), so a rerun reuses it and pip's cache makes a
new one cheap; it is never shared between different code, so concurrent sessions on other
branches cannot change what this one tests.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from locking import locked

from gradcam_model.cli import main

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.xdist_group("serve_venv")  # one xdist worker builds and uses the venv


def _pip(python: Path, *args: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=1200,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def _remove_old_venvs(folder: Path, days: float = 1.0) -> None:
    """Venvs of other code built over a day ago (~600 MB each) go."""
    cutoff = time.time() - days * 86400
    for old in folder.glob("gradcam-serve-venv-*"):
        if old.is_dir() and old.stat().st_mtime < cutoff:
            shutil.rmtree(old, ignore_errors=True)


@pytest.fixture(scope="module")
def serve_venv(tmp_path_factory) -> Path:
    """``bin/`` of a venv holding ``pip install .`` of this tree and nothing else."""
    package = sorted(p for p in (ROOT / "gradcam_model").rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    files = [ROOT / "pyproject.toml", ROOT / "README.md", *package]  # modules and their assets (the pages)
    # scripts/test.sh names the constraints the dev venv was installed with (empty: the newest versions)
    constraints = os.environ.get("GRADCAM_CONSTRAINTS", str(ROOT / "constraints.txt"))
    pins = ["-c", constraints] if constraints else []
    digest = hashlib.sha256(sys.version.encode())
    if constraints:
        digest.update(Path(constraints).read_bytes())
    for file in files:
        digest.update(str(file.relative_to(ROOT)).encode() + b"\0" + file.read_bytes())
    digest.update(b"from the wheel")
    venv = Path(tempfile.gettempdir()) / f"gradcam-serve-venv-{digest.hexdigest()[:12]}"
    with locked(venv.with_name(venv.name + ".lock")):
        if not (venv / ".complete").exists():
            source = tmp_path_factory.mktemp("source")  # a copy: building in place would litter the tree
            for file in files:
                (source / file.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(file, source / file.relative_to(ROOT))
            wheel = _build_wheel(source, tmp_path_factory.mktemp("wheel"))
            shutil.rmtree(venv, ignore_errors=True)
            _remove_old_venvs(venv.parent)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
            _pip(venv / "bin" / "python", *pins, str(wheel))
            (venv / ".complete").write_text(f"pip install {wheel.name} done\n")
    return venv / "bin"


def _build_wheel(source: Path, folder: Path) -> Path:
    """``pip wheel --no-deps``: the one wheel a release publishes, built as pip builds it (isolated backend)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check", "-w", str(folder),
         str(source)],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    [wheel] = folder.glob("gradcam_model-*.whl")
    return wheel


def _size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink()) / 1e6


def test_the_wheel_holds_the_package_and_the_readme_size_is_measured(serve_venv):
    """The installed files come from the wheel, and the README's serve-install size is this venv's, within 10%."""
    code = "import gradcam_model, sys; print(gradcam_model.__file__)"
    done = _run([serve_venv / "python", "-c", code], cwd=serve_venv)  # not this tree's folder
    assert done.returncode == 0 and "site-packages" in done.stdout, done  # installed, not this tree
    records = list((serve_venv.parent / "lib").glob("python*/site-packages/gradcam_model-*.dist-info/RECORD"))
    assert len(records) == 1
    listed = records[0].read_text()
    for module in ("gradcam_model/runtime/pipeline.py", "gradcam_model/runtime/journal.py",
                   "gradcam_model/serving/server.py", "gradcam_model/cli/explain.py",
                   "gradcam_model/runtime/assets/report.js", "gradcam_model/serving/assets/upload.html"):  # fmt: skip
        assert module in listed
    measured = _size_mb(serve_venv.parent)
    readme = (ROOT / "README.md").read_text()
    claimed = float(re.search(r"a fresh venv with the wheel installed is (\d+) MB", readme).group(1))
    assert abs(measured - claimed) <= 0.1 * claimed, f"README says {claimed} MB, the venv holds {measured:.0f} MB"


def test_build_side_names_raise_our_import_error_in_the_wheel_venv(serve_venv):
    code = (
        "import gradcam_model as gc\n"
        "try:\n"
        "    gc.GradCAMModel\n"
        "except ImportError as exc:\n"
        "    print(type(exc).__name__, isinstance(exc, gc.GradCAMError), exc)\n"
    )
    done = _run([serve_venv / "python", "-c", code], cwd=serve_venv)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        "MissingExtraError True gradcam_model.GradCAMModel is build side and needs torch, which this install lacks "
        '(the base install runs artifacts only): pip install "gradcam_model[export]"\n'
    )


def _run(command, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the installed copy, not this tree
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=600, env=env, **kwargs)


def test_no_torch_anywhere_and_the_runtime_does_not_import_it(serve_venv):
    code = (
        "import importlib.util, sys; import gradcam_model.runtime, gradcam_model; "
        "print(importlib.util.find_spec('torch') is None, 'torch' in sys.modules, gradcam_model.__version__)"
    )
    done = _run([serve_venv / "python", "-c", code], cwd=serve_venv)  # not this tree's folder
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[:2] == ["True", "False"]


def _photos(folder: Path) -> Path:
    rng = np.random.default_rng(5)
    for i, size in enumerate([(96, 72), (64, 64), (50, 80)]):
        sub = folder / ("cat" if i % 2 else "dog")
        sub.mkdir(parents=True, exist_ok=True)
        image = cv2.resize(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), size, interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(sub / f"p{i}.jpg"), image)
    (folder / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return folder


_MAPS = """
import sys, numpy as np
from gradcam_model.runtime import load_explainer, load_image, preprocess
e = load_explainer(sys.argv[1])
paths = sys.argv[3:]
x = np.stack([preprocess(load_image(p), e.metadata) for p in paths])
np.save(sys.argv[2], e(x).cam)
"""


def test_explain_matches_the_dev_venv(serve_venv, artifacts, tmp_path, monkeypatch, capsys):
    photos = _photos(tmp_path / "photos")
    artifact = artifacts["static.onnx"]  # exported by this (dev) venv
    for side in ("dev", "serve"):
        (tmp_path / side).mkdir()
    monkeypatch.chdir(tmp_path / "dev")
    assert main(["explain", str(artifact), str(photos), "--out", "out"]) == 1  # broken.png
    capsys.readouterr()
    done = _run([serve_venv / "gradcam", "explain", artifact, photos, "--out", "out"], cwd=tmp_path / "serve")
    assert done.returncode == 1, done.stderr
    assert "libpng" not in done.stderr and "Traceback" not in done.stderr
    dev_csv = (tmp_path / "dev" / "out" / "predictions.csv").read_text()
    serve_csv = (tmp_path / "serve" / "out" / "predictions.csv").read_text()
    assert serve_csv == dev_csv
    rows = list(csv.DictReader(serve_csv.splitlines()))
    assert sum(1 for r in rows if r["error"]) == 1 and len(rows) == 4

    good = sorted(str(p) for p in photos.rglob("*.jpg"))
    done = _run([serve_venv / "python", "-c", _MAPS, artifact, tmp_path / "serve.npy", *good])
    assert done.returncode == 0, done.stderr
    from gradcam_model.runtime import load_explainer, load_image, preprocess

    explainer = load_explainer(artifact)
    want = explainer(np.stack([preprocess(load_image(p), explainer.metadata) for p in good])).cam
    np.testing.assert_allclose(np.load(tmp_path / "serve.npy"), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("argv", "extra"),
    [
        (["export", "--arch", "resnet18", "--out", "never"], "[export]"),
        (["layers", "--arch", "resnet18"], "[export]"),
        (["validate", "model.onnx"], "[export]"),
        (["demo", "--out", "never"], "[export,demo]"),
        (["bench", "--quick"], "[export,bench]"),
    ],
)
def test_build_commands_name_the_extra(serve_venv, tmp_path, argv, extra):
    done = _run([serve_venv / "gradcam", *argv], cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"gradcam: error: gradcam {argv[0]} needs torch")
    assert lines[0].endswith(f'pip install "gradcam_model{extra}"')
    assert not list(tmp_path.iterdir())


def test_torchscript_artifact_needs_torch(serve_venv, artifacts, tmp_path):
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    done = _run([serve_venv / "gradcam", "explain", artifacts["static.pt"], image, "--out", tmp_path / "out"])
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"gradcam: error: {artifacts['static.pt']} is a TorchScript artifact, which needs torch: "
        'pip install "gradcam_model[export]", or use the .onnx artifact (ONNX Runtime only)'
    ]
    assert not (tmp_path / "out").exists()
