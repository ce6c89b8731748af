"""ONNX and TorchScript artifacts: contract, parity across the zoo, metadata, atomic writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import zoo_model, zoo_params, zoo_wrapper

from gradcam_model import (
    INPUT_NAMES,
    OUTPUT_NAMES,
    ExportError,
    GradCAMModel,
    assert_parity,
    export_onnx,
    export_torchscript,
    load_explainer,
    reference_cam,
    validate,
)
from gradcam_model.contract import SCHEMA_VERSION
from gradcam_model.export.metadata import metadata_for

CAM_ATOL = 1e-4
LOGITS_RTOL = 1e-4


def _compare(explainer, model, images, classes=None):
    meta = explainer.metadata
    got = explainer(images.numpy(), None if classes is None else classes.numpy())
    want = reference_cam(
        model,
        meta.target_layer,
        images,
        classes,
        meta.method,
        top_k=meta.top_k,
        return_all=True,
    )
    want = [w.numpy() for w in want]
    scale = np.abs(want[0]).max()
    assert np.abs(got.logits - want[0]).max() <= LOGITS_RTOL * scale
    np.testing.assert_array_equal(got.class_index, want[2])
    np.testing.assert_allclose(got.probabilities, want[1], rtol=0, atol=1e-5)
    np.testing.assert_allclose(got.score, want[3], rtol=0, atol=1e-5)
    np.testing.assert_allclose(got.cam, want[4], rtol=0, atol=CAM_ATOL)
    flat = want[4].reshape(*want[4].shape[:2], -1)
    assert (flat.max(-1) - flat.min(-1) > 0.5).all(), "compared maps are flat"
    return got


@pytest.mark.parametrize(("arch", "which"), zoo_params())
def test_zoo_artifacts_match_reference(arch, which, tmp_path):
    """Exported at batch 2; validated at 1 and 5 (at another size where H, W are dynamic)."""
    wrapper = zoo_wrapper(arch, which)
    model = zoo_model(arch)
    for export in (export_onnx, export_torchscript):
        path = export(wrapper, tmp_path / f"{arch}.{'onnx' if export is export_onnx else 'pt'}")
        explainer = load_explainer(path, providers=["CPUExecutionProvider"], device="cpu")
        report = validate(explainer, model, batch_sizes=(1, 5), seed=len(arch))
        assert_parity(report)
        assert [b[0] for b in report.batches] == [1, 5]
        if wrapper.dynamic_spatial:
            assert report.batches[1][2:] != tuple(wrapper.example_size)
        # every output held to the stated tolerance unless eager float32 is itself that far off;
        # probabilities and scores also move by up to half the logits' accepted difference (softmax)
        logits = report.outputs["logits"]
        for diff in report.outputs.values():
            softmax = logits.max_abs / 2 if diff.name in ("probabilities", "score") else 0.0
            assert diff.limit == max(diff.tolerance, 2 * diff.noise, softmax)
        assert report.class_agreement == 1.0 and report.near_ties <= 1
        assert report.structured_maps >= 0.5, "compared maps are mostly flat"


def test_onnx_contract(artifacts):
    for name, inputs in (("dynamic.onnx", list(INPUT_NAMES)), ("static.onnx", ["image"])):
        proto = onnx.load(artifacts[name])
        onnx.checker.check_model(proto, full_check=True)
        assert [i.name for i in proto.graph.input] == inputs
        assert [o.name for o in proto.graph.output] == list(OUTPUT_NAMES)

        def dims(value):
            return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

        image = proto.graph.input[0]
        assert image.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        outputs = {o.name: o for o in proto.graph.output}
        assert outputs["class_index"].type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert [outputs[n].type.tensor_type.elem_type for n in ("logits", "probabilities", "score", "cam")] == [
            onnx.TensorProto.FLOAT
        ] * 4
        if name == "dynamic.onnx":
            assert dims(image) == ["batch", 3, "height", "width"]
            assert dims(outputs["cam"]) == ["batch", 1, "height", "width"]
            assert dims(proto.graph.input[1]) == ["batch"]
            assert proto.graph.input[1].type.tensor_type.elem_type == onnx.TensorProto.INT64
        else:
            assert dims(image) == ["batch", 3, 64, 64]
            assert dims(outputs["cam"]) == ["batch", 1, 64, 64]
        assert dims(outputs["logits"]) == ["batch", 10]
        # the upsampling of the maps is one bilinear Resize (align_corners=False), not
        # the index arithmetic torch.onnx's decomposition of upsample_bilinear2d makes
        resize = [n for n in proto.graph.node if n.op_type == "Resize"]
        assert len(resize) == 1
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in resize[0].attribute}
        assert (attrs["mode"], attrs["coordinate_transformation_mode"]) == (b"linear", b"half_pixel")
        props = {p.key: p.value for p in proto.metadata_props}
        assert json.loads(props["target_layer"]) in ("layer4", "layer2")
        assert json.loads(props["gradcam.json"])["schema_version"] == SCHEMA_VERSION


@pytest.mark.parametrize("fmt", ["onnx", "pt"])
@pytest.mark.parametrize("kind", ["dynamic", "static"])
def test_metadata_round_trips(artifacts, fmt, kind):
    wrapper = artifacts["wrappers"][kind]
    explainer = load_explainer(artifacts[f"{kind}.{fmt}"], device="cpu")
    expected = metadata_for(wrapper, "onnx" if fmt == "onnx" else "torchscript", opset=20 if fmt == "onnx" else None)
    assert explainer.metadata == expected
    assert explainer.metadata.input_size == (None if kind == "dynamic" else (64, 64))
    assert explainer.metadata.class_input is (kind == "dynamic")


@pytest.mark.parametrize("fmt", ["onnx", "pt"])
def test_global_pool_model_exported_square_explains_wide_image(tmp_path, fmt, resnet18):
    wrapper = GradCAMModel(resnet18, "layer4", example_input=torch.randn(1, 3, 224, 224))
    assert wrapper.dynamic_spatial
    path = (export_onnx if fmt == "onnx" else export_torchscript)(wrapper, tmp_path / f"wide.{fmt}")
    explainer = load_explainer(path, device="cpu")
    images = torch.randn(2, 3, 224, 448, generator=torch.Generator().manual_seed(3))
    got = _compare(explainer, resnet18, images)
    assert got.cam.shape == (2, 1, 224, 448)


@pytest.mark.parametrize("fmt", ["onnx", "pt"])
def test_refuses_to_replace_unless_overwrite(artifacts, tmp_path, fmt):
    wrapper = artifacts["wrappers"]["static"]
    export = export_onnx if fmt == "onnx" else export_torchscript
    path = tmp_path / f"a.{fmt}"
    path.write_bytes(b"older artifact")
    with pytest.raises(ExportError, match="already exists; pass overwrite=True"):
        export(wrapper, path)
    assert path.read_bytes() == b"older artifact"
    export(wrapper, path, overwrite=True)
    assert load_explainer(path, device="cpu").metadata.target_layer == "layer2"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"a.{fmt}"]


def _fail(*_args, **_kwargs):
    raise RuntimeError("simulated exporter failure")


@pytest.mark.parametrize(
    ("fmt", "target"),
    [("onnx", "torch.onnx.export"), ("pt", "torch.jit.script"), ("pt", "torch.jit.save")],
)
def test_failed_export_leaves_older_artifact_intact(artifacts, tmp_path, monkeypatch, fmt, target):
    path = tmp_path / f"model.{fmt}"
    old = Path(artifacts[f"static.{fmt}"]).read_bytes()
    path.write_bytes(old)
    monkeypatch.setattr(target, _fail)
    export = export_onnx if fmt == "onnx" else export_torchscript
    with pytest.raises(ExportError, match="simulated exporter failure") as info:
        export(artifacts["wrappers"]["dynamic"], path, overwrite=True)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.parametrize("fmt", ["onnx", "pt"])
def test_full_disk_leaves_older_artifact_intact(artifacts, tmp_path, monkeypatch, fmt):
    import errno

    from gradcam_model import _atomic

    path = tmp_path / f"model.{fmt}"
    old = Path(artifacts[f"static.{fmt}"]).read_bytes()
    path.write_bytes(old)
    real_write = os.write

    def write_until_full(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_atomic.os, "write", write_until_full)
    export = export_onnx if fmt == "onnx" else export_torchscript
    with pytest.raises(ExportError, match="No space left on device.*older file there is unchanged"):
        export(artifacts["wrappers"]["dynamic"], path, overwrite=True)
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_killed_export_leaves_older_artifact_intact(artifacts, tmp_path):
    path = tmp_path / "model.onnx"
    old = Path(artifacts["static.onnx"]).read_bytes()
    path.write_bytes(old)
    script = textwrap.dedent(
        f"""
        import sys, torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from zoo import build
        from gradcam_model import GradCAMModel, export_onnx
        w = GradCAMModel(build("resnet18"), "layer3", example_input=torch.randn(1, 3, 64, 64))
        print("exporting", flush=True)
        export_onnx(w, {str(path)!r}, overwrite=True)
        print("done", flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "exporting"
        time.sleep(1.0)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


@pytest.mark.parametrize("fmt", ["onnx", "pt"])
def test_export_rejects_non_wrapper(tmp_path, fmt, resnet18):
    export = export_onnx if fmt == "onnx" else export_torchscript
    with pytest.raises(ExportError, match="expects a GradCAMModel, got ResNet"):
        export(resnet18, tmp_path / f"x.{fmt}")
    assert not list(tmp_path.iterdir())


def test_export_into_unwritable_folder(artifacts, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores permission bits: use a path under a file
            target = tmp_path / "a_file" / "model.onnx"
            (tmp_path / "a_file").write_text("not a folder")
        else:
            target = locked / "model.onnx"
        with pytest.raises(ExportError, match="cannot (write|create)"):
            export_onnx(artifacts["wrappers"]["static"], target)
    finally:
        locked.chmod(0o700)


class _InPlaceNet(torch.nn.Module):
    """A residual block with in-place ops: ``relu_`` after the conv, ``add_`` of the shortcut."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, x):
        y = torch.relu_(self.conv1(x))
        y = torch.relu_(self.conv2(y).add_(y))
        return self.fc(y.mean((2, 3)))


def test_onnx_export_skips_torch_onnx_retrace_when_nothing_needs_decomposing(tmp_path, caplog):
    """In-place ops nobody observes become out-of-place, so torch.onnx's decomposition re-trace is skipped."""
    from gradcam_model.export.retrace import prepare_graph

    torch.manual_seed(0)
    model = torch.nn.Sequential(_InPlaceNet()).eval()
    wrapper = GradCAMModel(model, "0.conv2", example_input=torch.randn(1, 3, 16, 16))

    def inplace(gm):
        return [str(n.target) for n in gm.graph.nodes if n.op == "call_function" and _writes_first_argument(n)]

    before = inplace(wrapper.graph)
    assert {"aten.relu_.default", "aten.add_.Tensor"} <= set(before), before  # the test has something to do
    assert inplace(prepare_graph(wrapper.graph)) == []
    assert inplace(wrapper.graph) == before  # a copy: the wrapper's graph (TorchScript, eager) is left alone
    with caplog.at_level("INFO", logger="gradcam_model.export.retrace"):
        path = export_onnx(wrapper, tmp_path / "inplace.onnx")
    assert "torch.onnx: nothing to decompose, no re-trace" in caplog.messages
    images = torch.randn(3, 3, 16, 24)
    _compare(load_explainer(path, providers=["CPUExecutionProvider"]), model, images)


def test_identity_nodes_alone_do_not_cost_a_retrace(tmp_path, caplog):
    """VGG's AdaptiveAvgPool2d(7) on a smaller map: its gradient's constants (``detach_``) and the
    pooling decomposition's same-dtype ``aten.to`` used to send the whole program through torch.onnx's
    re-trace; they pass values through, so they are dropped and the re-trace is skipped."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.AdaptiveAvgPool2d(7),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 49, 3),
    ).eval()
    wrapper = GradCAMModel(model, "1", example_input=torch.randn(2, 3, 8, 8))
    with caplog.at_level("DEBUG", logger="gradcam_model.export.retrace"):
        path = export_onnx(wrapper, tmp_path / "pool.onnx")
    dropped = [m for m in caplog.messages if "identity node(s) dropped" in m]
    assert dropped, caplog.messages  # the model has the nodes this test is about
    assert "torch.onnx: nothing to decompose, no re-trace" in caplog.messages
    images = torch.randn(3, 3, 8, 8)
    _compare(load_explainer(path, providers=["CPUExecutionProvider"]), model, images)


def _writes_first_argument(node) -> bool:
    schema = getattr(node.target, "_schema", None)
    alias = schema.arguments[0].alias_info if schema is not None and schema.arguments else None
    return bool(alias and alias.is_write)


def test_in_place_ops_whose_input_is_read_later_stay_in_place():
    from torch import fx

    from gradcam_model.export.retrace import prepare_graph

    aten = torch.ops.aten
    graph = fx.Graph()
    x = graph.placeholder("x")
    a = graph.call_function(aten.sub.Tensor, (x, 0.5))
    b = graph.call_function(aten.relu_.default, (a,))  # `a` is read again below: it must see the mutation
    c = graph.call_function(aten.mul.Tensor, (x, 2.0))
    d = graph.call_function(aten.relu_.default, (c,))  # nothing reads `c` afterwards: this one may become relu
    e = graph.call_function(aten.add.Tensor, (a, b))
    graph.output(graph.call_function(aten.add.Tensor, (e, d)))
    gm = fx.GraphModule(torch.nn.Module(), graph)
    copy = prepare_graph(gm)
    targets = [n.target for n in copy.graph.nodes if n.op == "call_function"]
    assert targets == [aten.sub.Tensor, aten.relu_.default, aten.mul.Tensor, aten.relu.default] + [aten.add.Tensor] * 2
    x = torch.randn(64)
    torch.testing.assert_close(copy(x), gm(x.clone()), rtol=0, atol=0)


def test_ops_onnx_lacks_are_decomposed_before_the_export():
    """``aten._safe_softmax`` (math attention) becomes torch's decomposition, traced by torch.export itself."""
    from torch import fx

    from gradcam_model.export.retrace import prepare_graph

    graph = fx.Graph()
    x = graph.placeholder("x")
    graph.output(graph.call_function(torch.ops.aten._safe_softmax.default, (x, -1)))
    gm = fx.GraphModule(torch.nn.Module(), graph)
    copy = prepare_graph(gm)
    [node] = [n for n in copy.graph.nodes if n.op == "call_function"]
    assert node.target is not torch.ops.aten._safe_softmax.default and callable(node.target)
    x = torch.randn(3, 5)
    x[1] = float("-inf")  # a fully masked row: zeros, not NaN, is what _safe_softmax means
    torch.testing.assert_close(copy(x), gm(x), rtol=0, atol=0)
    assert bool((copy(x)[1] == 0).all())
