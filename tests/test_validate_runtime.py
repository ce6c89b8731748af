"""``validate --runtime``: the runtime choice and its errors as a contract; ``validate --junit``'s XML."""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET

import pytest
import torch
from zoo import build

from gradcam_model.checks.runtimes import (
    RuntimeChoice,
    RuntimeChoiceError,
    RuntimeUnavailableError,
    load_under,
    parse_runtime,
)
from gradcam_model.cli import main
from gradcam_model.errors import ArtifactError


@pytest.mark.parametrize(
    "spec, path, want",
    [
        ("onnxruntime", "m.onnx", RuntimeChoice("onnxruntime", "cpu")),
        ("ONNXRuntime:CUDA", "m.onnx", RuntimeChoice("onnxruntime", "cuda")),
        ("openvino", "m.onnx", RuntimeChoice("openvino", "CPU")),
        ("openvino:gpu", "m.onnx", RuntimeChoice("openvino", "GPU")),
        ("onnx-reference", "m.onnx", RuntimeChoice("onnx-reference", "cpu")),
        ("libtorch", "m.pt", RuntimeChoice("libtorch", "cpu")),
    ],
)
def test_runtime_names(spec, path, want):
    assert parse_runtime(spec, path) == want


@pytest.mark.parametrize(
    "spec, path, match",
    [
        ("tflite", "m.onnx", r"unknown runtime 'tflite'; valid: onnxruntime\[:cpu\|cuda\|tensorrt\], openvino"),
        ("onnxruntime:rocm", "m.onnx", r"unknown device 'rocm' for onnxruntime; valid: cpu, cuda, tensorrt"),
        ("openvino:NPU", "m.onnx", r"unknown device 'NPU' for openvino; valid: CPU, GPU"),
        ("openvino", "m.pt", r"openvino runs \.onnx artifacts, not m\.pt; for this file use libtorch"),
        ("libtorch", "m.onnx", r"libtorch runs \.pt/\.ts/\.pth artifacts, not m\.onnx; for this file use onnxruntime"),
    ],
)
def test_bad_runtime_names(spec, path, match):
    with pytest.raises(RuntimeChoiceError, match=match):
        parse_runtime(spec, path)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, resnet18_layer2):
    """resnet18 at layer2, static 64x64 (conftest's wrapper; one export, not conftest's four)."""
    from gradcam_model import export_onnx

    assert resnet18_layer2.architecture == "resnet18"  # recognized: validate reads it from the artifact
    return {"static.onnx": export_onnx(resnet18_layer2, tmp_path_factory.mktemp("artifact") / "static.onnx")}


@pytest.fixture(scope="module")
def weights(tmp_path_factory, resnet18):
    root = tmp_path_factory.mktemp("weights")
    torch.save(resnet18.state_dict(), root / "resnet18.pth")
    torch.save(build("resnet18", seed=5).state_dict(), root / "other.pth")  # same shapes, other outputs
    return root


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "runtime, match",
    [
        ("tflite", r"unknown runtime 'tflite'; valid: onnxruntime"),
        ("onnxruntime:cuda", r"onnxruntime:cuda needs a CUDA GPU|has no CUDAExecutionProvider"),
        ("onnxruntime:tensorrt", r"onnxruntime:tensorrt needs a CUDA GPU|has no TensorrtExecutionProvider"),
        ("libtorch", r"libtorch runs \.pt/\.ts/\.pth artifacts, not static\.onnx"),
    ],
)
def test_runtime_user_errors_exit_2_with_one_line(capsys, artifacts, weights, runtime, match):
    """No GPU here: a GPU runtime is refused, never run on the CPU in its name."""
    code, out, err = _cli(capsys, "validate", artifacts["static.onnx"], "--weights", weights / "resnet18.pth",
                          "--runtime", runtime)  # fmt: skip
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("gradcam: error: ")
    assert re.search(match, err), err


def test_a_runtime_that_is_not_installed_names_what_to_install(monkeypatch, artifacts):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    with pytest.raises(
        RuntimeUnavailableError, match=r'openvino is not installed: pip install "gradcam_model\[openvino\]"'
    ):
        load_under(artifacts["static.onnx"], "openvino")


def test_a_missing_artifact_stays_a_user_error(tmp_path):
    with pytest.raises(ArtifactError, match=r"artifact .*nope\.onnx does not exist"):
        load_under(tmp_path / "nope.onnx", "onnx-reference")


@pytest.mark.parametrize("runtime", ["openvino", "onnx-reference"])
def test_validate_under_another_runtime_names_it(capsys, artifacts, weights, tmp_path, runtime):
    if runtime == "openvino":
        pytest.importorskip("openvino")
    code, out, err = _cli(capsys, "validate", artifacts["static.onnx"], "--weights", weights / "resnet18.pth",
                          "--runtime", runtime, "--json", tmp_path / "r.json")  # fmt: skip
    assert code == 0, out + err
    line = next(x for x in out.splitlines() if "runtime:" in x)
    if runtime == "openvino":
        assert re.search(r"runtime: openvino \S+ on CPU \(INFERENCE_PRECISION_HINT=f32\)", line), line
    else:
        assert re.search(r"runtime: onnx-reference \S+ on cpu \(numpy\)", line), line
    assert f'"name": "{runtime}"' in (tmp_path / "r.json").read_text()


def _suite(path) -> ET.Element:
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    return suite


def test_junit_passing_report(capsys, artifacts, weights, tmp_path):
    xml = tmp_path / "parity.xml"
    code, out, _ = _cli(capsys, "validate", artifacts["static.onnx"], "--weights", weights / "resnet18.pth",
                        "--junit", xml)  # fmt: skip
    assert code == 0 and f"wrote {xml}" in out
    suite = _suite(xml)
    cases = suite.findall("testcase")
    # validate's default batches (1 and 3): 4 outputs and the class agreement each
    assert int(suite.get("tests")) == len(cases) == 10 and suite.get("failures") == "0"
    assert {c.get("name") for c in cases} >= {"cam @ 1x3x64x64", "cam @ 3x3x64x64", "class agreement @ 3x3x64x64"}
    assert not suite.findall(".//failure")
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["runtime"] == "onnxruntime" and props["device"] == "CPUExecutionProvider"


def test_junit_failures_carry_the_table_row(capsys, artifacts, weights, tmp_path):
    xml = tmp_path / "parity.xml"
    code, out, _ = _cli(capsys, "validate", artifacts["static.onnx"], "--weights", weights / "other.pth",
                        "--junit", xml)  # fmt: skip
    assert code == 1 and "FAILED" in out
    failures = _suite(xml).findall(".//testcase/failure")
    assert failures
    logits = [f for f in failures if f.get("message").startswith("logits: max_rel")]
    assert len(logits) == 2  # both batches: other weights, other logits
    row = next(x for x in out.splitlines() if x.strip().startswith("logits"))
    assert logits[0].text == row.strip()
    # nothing but the XML's own write: no temporary left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parity.xml"]
