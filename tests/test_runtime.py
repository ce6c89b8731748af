"""Explainers under ONNX Runtime and libtorch: inputs, bad artifacts, parity reports, threads."""

from __future__ import annotations

import copy
import json
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradcam_model import (
    ArtifactError,
    GradCAMModel,
    InputError,
    ParityError,
    assert_parity,
    export_onnx,
    load_explainer,
    reference_cam,
    validate,
)
from gradcam_model.export.metadata import METADATA_KEY

FORMATS = ["onnx", "pt"]


def _load(artifacts, kind, fmt):
    return load_explainer(artifacts[f"{kind}.{fmt}"], providers=["CPUExecutionProvider"], device="cpu")


BAD_IMAGES = [
    (np.zeros((2, 64, 64), np.float32), "3 channels"),  # a [C,H,W] image with 2 channels
    (np.zeros((1, 1, 3, 64, 64), np.float32), "got shape \\(1, 1, 3, 64, 64\\)"),
    (np.zeros((1, 4, 64, 64), np.float32), "3 channels"),
    (np.zeros((1, 3, 64, 64), np.uint8), "float16/32/64.*got uint8"),
    (np.zeros((1, 3, 64, 64), np.int64), "got int64"),
    (np.zeros((1, 3, 64, 64), bool), "got bool"),
    (np.zeros((0, 3, 64, 64), np.float32), "empty batch"),
    ("not an array", "numpy array or torch tensor, got str"),
]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("images", "match"), BAD_IMAGES)
def test_bad_images(artifacts, fmt, images, match):
    with pytest.raises(InputError, match=match):
        _load(artifacts, "dynamic", fmt)(images)


@pytest.mark.parametrize("fmt", FORMATS)
def test_nan_and_inf_name_the_sample(artifacts, fmt):
    explainer = _load(artifacts, "dynamic", fmt)
    images = np.zeros((3, 3, 64, 64), np.float32)
    images[1, 0, 5, 5] = np.nan
    images[2, 2, 0, 0] = np.inf
    with pytest.raises(InputError, match="NaN or Inf in sample\\(s\\) \\[1, 2\\]"):
        explainer(images)


@pytest.mark.parametrize("fmt", FORMATS)
def test_fixed_size_artifact_rejects_other_sizes(artifacts, fmt):
    with pytest.raises(InputError, match="takes 64x64 images.*got 64x96"):
        _load(artifacts, "static", fmt)(np.zeros((1, 3, 64, 96), np.float32))


BAD_CLASSES = [
    (np.array([0, 10]), "class_index\\[1\\] = 10 is out of range; expected 0..9, or -1"),
    (np.array([-2, 0]), "class_index\\[0\\] = -2"),
    (np.array([0, 1, 2]), "one int or \\[2\\] ints"),
    (np.array([[0, 1]]), "one int or \\[2\\] ints"),
    (np.array([0.5, 1.0]), "integers"),
    ("cat", "integers|numpy array"),
]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("classes", "match"), BAD_CLASSES)
def test_bad_class_index(artifacts, fmt, classes, match):
    with pytest.raises(InputError, match=match):
        _load(artifacts, "dynamic", fmt)(np.zeros((2, 3, 64, 64), np.float32), classes)


@pytest.mark.parametrize("fmt", FORMATS)
def test_class_index_needs_a_class_input_artifact(artifacts, fmt):
    with pytest.raises(InputError, match="takes no class; export it with class_input=True"):
        _load(artifacts, "static", fmt)(np.zeros((1, 3, 64, 64), np.float32), 3)


@pytest.mark.parametrize("fmt", FORMATS)
def test_accepted_input_forms_agree(artifacts, fmt):
    explainer = _load(artifacts, "dynamic", fmt)
    base = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)).half().float()
    ref = explainer(base.numpy(), [2, -1])
    for images in (base, base.half(), base.double().numpy(), base.numpy().astype(np.float16)):
        got = explainer(images, np.array([2, -1]))
        for a, b in zip(got.outputs(), ref.outputs(), strict=True):
            np.testing.assert_array_equal(a, b)
    single = explainer(base[1], -1)  # one [C, H, W] image, one int class
    np.testing.assert_allclose(single.cam[0], ref.cam[1], rtol=0, atol=1e-5)  # batch-size dependent kernels
    assert ref.class_index[0, 0] == 2
    assert ref.class_index[1, 0] == ref.logits[1].argmax()
    assert ref.labels() == [["2"], [str(ref.class_index[1, 0])]]


def _truncated(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


@pytest.mark.parametrize("fmt", FORMATS)
def test_unreadable_artifacts(artifacts, tmp_path, fmt):
    src = Path(artifacts[f"static.{fmt}"])
    cases = {
        "missing": (tmp_path / f"missing.{fmt}", "does not exist"),
        "truncated": (_truncated(src, tmp_path / f"truncated.{fmt}"), "not a loadable"),
        "garbage": (tmp_path / f"garbage.{fmt}", "not a loadable"),
        "folder": (tmp_path / f"folder.{fmt}", "not a file"),
    }
    cases["garbage"][0].write_bytes(np.random.default_rng(0).bytes(4096))
    cases["folder"][0].mkdir()
    for path, match in cases.values():
        with pytest.raises(ArtifactError, match=match):
            load_explainer(path, device="cpu")


def test_unknown_suffix(tmp_path):
    with pytest.raises(ArtifactError, match="unknown artifact type '.bin'"):
        load_explainer(tmp_path / "model.bin")


def test_onnx_without_our_metadata(tmp_path):
    node = onnx.helper.make_node("Identity", ["image"], ["logits"])
    graph = onnx.helper.make_graph(
        [node],
        "plain",
        [onnx.helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [1, 3])],
        [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, 3])],
    )
    path = tmp_path / "plain.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=9), path)
    with pytest.raises(ArtifactError, match="without gradcam_model metadata"):
        load_explainer(path)


def test_torchscript_without_our_metadata(tmp_path):
    path = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2)), str(path))
    with pytest.raises(ArtifactError, match="without gradcam_model metadata"):
        load_explainer(path, device="cpu")


def _bump_schema(text: str) -> str:
    record = json.loads(text)
    record["schema_version"] = 99
    return json.dumps(record)


def test_newer_schema_is_refused(artifacts, tmp_path):
    proto = onnx.load(artifacts["static.onnx"])
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            prop.value = _bump_schema(prop.value)
    onnx.save(proto, tmp_path / "future.onnx")
    with pytest.raises(ArtifactError, match="schema version 99 is newer.*upgrade gradcam_model"):
        load_explainer(tmp_path / "future.onnx")
    extra = {METADATA_KEY: ""}
    module = torch.jit.load(str(artifacts["static.pt"]), _extra_files=extra)
    torch.jit.save(module, str(tmp_path / "future.pt"), _extra_files={METADATA_KEY: _bump_schema(extra[METADATA_KEY])})
    with pytest.raises(ArtifactError, match="schema version 99 is newer"):
        load_explainer(tmp_path / "future.pt", device="cpu")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", ["dynamic", "static"])
def test_validate_reports_parity(artifacts, resnet18, fmt, kind):
    report = validate(artifacts[f"{kind}.{fmt}"], resnet18, inputs=np.zeros((2, 3, 64, 64), np.float32))
    assert report.ok, report.failures()
    assert assert_parity(report) is report
    assert report.cam_signal == 1.0  # normalized maps reach 1: not flat
    assert [b[0] for b in report.batches] == [1, 3, 2]
    if kind == "dynamic":  # another spatial size than the export's 64x64
        assert report.batches[1][2:] != (64, 64)
    record = report.to_dict()
    assert record["ok"] is True and set(record["outputs"]) == {"logits", "probabilities", "score", "cam"}
    assert "cam" in report.table()


@pytest.mark.parametrize("kind", ["dynamic", "static"])
def test_validate_each_shares_the_references(artifacts, resnet18, kind, monkeypatch):
    """Both formats of one graph: the reports of separate validations, for one set of eager passes."""
    from gradcam_model.checks import parity

    paths = [artifacts[f"{kind}.onnx"], artifacts[f"{kind}.pt"]]
    passes = []
    reference = parity._reference
    monkeypatch.setattr(parity, "_reference", lambda *a: passes.append(a[5]) or reference(*a))
    alone = [validate(path, resnet18).to_dict() for path in paths]
    separate = len(passes)
    passes.clear()
    together = [r.to_dict() for r in parity.validate_each(paths, resnet18)]
    assert together == alone  # classes, batches and every difference: the same draws, the same comparisons
    assert separate > 0 and len(passes) == separate // 2
    assert passes.count(torch.float64) == 2  # one float64 pass per batch (batches of 1 and 3), not one per artifact


def test_validate_each_refuses_artifacts_of_different_graphs(artifacts, resnet18):
    from gradcam_model.checks.parity import validate_each

    with pytest.raises(InputError, match="differ in target_layer, .*validate them separately"):
        validate_each([artifacts["static.onnx"], artifacts["dynamic.pt"]], resnet18)


def test_validate_catches_a_different_model(artifacts, resnet18):
    other = copy.deepcopy(resnet18)
    with torch.no_grad():
        for p in other.layer4.parameters():
            p.mul_(1.5)
    report = validate(artifacts["static.onnx"], other)
    assert not report.ok
    with pytest.raises(ParityError) as info:
        assert_parity(report)
    message = str(info.value)
    assert "logits: max_rel" in message and "cam: max_abs" in message
    assert message.count("\n") == len(report.failures())


def test_validate_does_not_call_uncompared_maps_ok(artifacts, resnet18):
    """A reference that never explains the artifact's classes proves nothing about the maps."""
    other = copy.deepcopy(resnet18)
    with torch.no_grad():  # negated logits: the reference's top class is the artifact's least likely one
        other.fc.weight.neg_()
        other.fc.bias.neg_()
    report = validate(artifacts["static.pt"], other)
    assert report.class_agreement == 0.0 and not report.ok
    assert not report.outputs["cam"].ok and not report.outputs["score"].ok
    assert "cam: not compared (no image's explained classes agree with the reference)" in report.failures()
    assert any(line.startswith("cam") and line.endswith("not compared") for line in report.table().splitlines())
    assert json.loads(json.dumps(report.to_dict(), allow_nan=False))["outputs"]["cam"]["max_abs"] is None


@pytest.mark.parametrize("fmt", FORMATS)
def test_deterministic(artifacts, fmt):
    explainer = _load(artifacts, "dynamic", fmt)
    images = np.random.default_rng(1).standard_normal((3, 3, 64, 64)).astype(np.float32)
    a, b = explainer(images), explainer(images)
    for x, y in zip(a.outputs(), b.outputs(), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("fmt", FORMATS)
def test_shared_by_threads(artifacts, fmt):
    """One explainer, 8 threads, 200 calls: exactly the serial results."""
    explainer = _load(artifacts, "dynamic", fmt)
    rng = np.random.default_rng(2)
    jobs = [
        (rng.standard_normal((1 + i % 3, 3, 64, 64)).astype(np.float32), rng.integers(-1, 10, 1 + i % 3))
        for i in range(200)
    ]
    serial = [explainer(x, c).cam for x, c in jobs]
    results: dict[int, np.ndarray] = {}
    errors = []

    def worker(start):
        try:
            for i in range(start, len(jobs), 8):
                results[i] = explainer(*jobs[i]).cam
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 200
    for i, want in enumerate(serial):
        np.testing.assert_array_equal(results[i], want)


@pytest.mark.parametrize("fmt", FORMATS)
def test_degenerate_inputs_give_finite_outputs(artifacts, fmt):
    explainer = _load(artifacts, "dynamic", fmt)
    for images in (np.zeros((2, 3, 64, 64), np.float32), np.full((2, 3, 64, 64), 1e4, np.float32)):
        out = explainer(images)
        assert all(np.isfinite(o).all() for o in out.outputs())
        assert ((out.cam >= 0) & (out.cam <= 1)).all()


def test_huge_and_tiny_logits(tmp_path, resnet18):
    for scale in (1e4, 1e-6):
        model = copy.deepcopy(resnet18)
        with torch.no_grad():
            model.fc.weight.mul_(scale)
        wrapper = GradCAMModel(model, "layer4", example_input=torch.randn(1, 3, 64, 64))
        path = export_onnx(wrapper, tmp_path / f"scaled{scale}.onnx")
        out = load_explainer(path)(np.random.default_rng(3).standard_normal((2, 3, 64, 64)).astype(np.float32))
        assert all(np.isfinite(o).all() for o in out.outputs())
        np.testing.assert_allclose(out.probabilities.sum(1), 1.0, rtol=1e-5)
        ref = reference_cam(
            model,
            "layer4",
            torch.from_numpy(np.random.default_rng(3).standard_normal((2, 3, 64, 64)).astype(np.float32)),
        )
        np.testing.assert_allclose(out.cam, ref.numpy(), atol=1e-4, rtol=0)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batch=st.integers(1, 4),
    scale=st.floats(0.05, 20.0),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_property_onnx_matches_reference(artifacts, resnet18, batch, scale, seed, data):
    explainer = _load(artifacts, "dynamic", "onnx")
    classes = np.array(data.draw(st.lists(st.integers(-1, 9), min_size=batch, max_size=batch)))
    images = torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(seed)) * scale
    got = explainer(images.numpy(), classes)
    want = reference_cam(resnet18, "layer4", images, torch.from_numpy(classes), return_all=True)
    np.testing.assert_array_equal(got.class_index, want[2].numpy())
    scale_logits = float(want[0].abs().max())
    assert np.abs(got.logits - want[0].numpy()).max() <= 1e-4 * scale_logits
    np.testing.assert_allclose(got.cam, want[4].numpy(), rtol=0, atol=1e-4)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".onnx"])
@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_pytorch_checkpoint_is_named_as_such(resnet18, tmp_path, suffix, zipped):
    path = tmp_path / f"weights{suffix}"
    torch.save({"state_dict": resnet18.state_dict()}, path, _use_new_zipfile_serialization=zipped)
    with pytest.raises(ArtifactError, match="is a PyTorch checkpoint, not an exported artifact; export it with"):
        load_explainer(path, device="cpu")


def test_providers_without_a_cuda_driver_are_cpu_only(monkeypatch):
    """onnxruntime-gpu lists CUDA everywhere; without libcuda.so.1 we never ask for it (no error noise)."""
    import ctypes

    import onnxruntime as ort

    from gradcam_model.runtime import explainer as explainer_module

    def no_driver(name, *args, **kwargs):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", no_driver)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    explainer_module.cuda_device_count.cache_clear()
    try:
        assert explainer_module.default_providers() == ["CPUExecutionProvider"]
    finally:
        explainer_module.cuda_device_count.cache_clear()


def test_cuda_sessions_ask_for_float32_math(monkeypatch, artifacts):
    """ORT's CUDA provider runs float32 convolutions and MatMuls in TF32 unless told (use_tf32 defaults to 1)."""
    import onnxruntime as ort

    from gradcam_model.runtime import explainer as explainer_module

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(explainer_module, "cuda_device_count", lambda: 1)
    cuda = ("CUDAExecutionProvider", {"use_tf32": "0"})  # GPU 0 unnamed: naming it makes ORT >= 1.26 warn
    assert explainer_module.default_providers() == [cuda, "CPUExecutionProvider"]
    assert explainer_module.cuda_provider(1) == ("CUDAExecutionProvider", {"device_id": "1", "use_tf32": "0"})
    asked = []

    def session(path, sess_options=None, providers=None):  # what the explainer hands to ONNX Runtime
        asked.append(providers)
        raise RuntimeError("no GPU here")

    monkeypatch.setattr(ort, "InferenceSession", session)
    with pytest.raises(ArtifactError, match="no GPU here"):
        load_explainer(artifacts["static.onnx"])
    assert asked == [[cuda, "CPUExecutionProvider"]]


def test_the_provider_that_ran_is_reported(artifacts):
    explainer = load_explainer(artifacts["static.onnx"], providers=["CPUExecutionProvider"])
    assert explainer.provider == "CPUExecutionProvider"
