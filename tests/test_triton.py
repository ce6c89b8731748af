"""Triton model repositories: ``gradcam export --format triton`` and ``gradcam triton`` (both backends).

A real tritonserver loads and serves the python-backend repository in tests/test_triton_server.py.

config.pbtxt is parsed with Triton's own schema (tritonclient's ``model_config_pb2`` and
protobuf's text_format) in a subprocess that never imports kserve (the two register the
same protobuf messages), then compared with the ONNX graph read by ``onnx``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from gradcam_model import export_onnx
from gradcam_model.cli import main

NAMES = ["cat", "dog", 'say "cheese"', "back\\slash", "café", "f", "g", "h", "i", "j"]
_PARSE = r"""
import json, sys
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2
assert "kserve" not in sys.modules
config = text_format.Parse(open(sys.argv[1], encoding="utf-8").read(), model_config_pb2.ModelConfig())
print(json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True)))
"""
_ONNX_TYPES = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.INT64: "TYPE_INT64"}


def _parse(config: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", _PARSE, str(config)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _graph(path: Path) -> dict[str, tuple[str, list[int]]]:
    """name -> (Triton type, dims without the batch axis, -1 where symbolic) for each graph input and output."""
    graph = onnx.load(str(path), load_external_data=False).graph
    tensors = {}
    for value in (*graph.input, *graph.output):
        t = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        tensors[value.name] = (_ONNX_TYPES[t.elem_type], dims[1:])
    return tensors


def _check_against_graph(config: dict, model: Path, *, inputs: list[str]) -> None:
    graph = _graph(model)
    assert config["platform"] == "onnxruntime_onnx"
    assert [i["name"] for i in config["input"]] == inputs
    assert [o["name"] for o in config["output"]] == ["logits", "probabilities", "class_index", "score", "cam"]
    for tensor in (*config["input"], *config["output"]):
        dtype, dims = graph[tensor["name"]]
        assert tensor["data_type"] == dtype
        got = [int(d) for d in tensor["dims"]]
        if "reshape" in tensor:  # [N] in the graph: Triton's dims [1], reshaped to the graph's []
            assert got == [1] and tensor["reshape"].get("shape", []) == [] and dims == []
        else:
            assert got == dims, tensor["name"]


@pytest.fixture(scope="module")
def static_onnx(tmp_path_factory, resnet18_layer2):
    return export_onnx(resnet18_layer2, tmp_path_factory.mktemp("triton-src") / "static.onnx")


def test_gradcam_triton_fixed_size(static_onnx, tmp_path, capsys):
    repo = tmp_path / "repo"
    argv = ["triton", str(static_onnx), "--out", str(repo), "--max-batch-size", "16", "--instance-kind", "gpu"]
    assert main(argv) == 0
    assert "tritonserver --model-repository" in capsys.readouterr().out
    folder = repo / "static"
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) == [
        "1",
        "1/model.onnx",
        "config.pbtxt",
        "labels.txt",
    ]
    assert (folder / "1" / "model.onnx").read_bytes() == static_onnx.read_bytes()
    config = _parse(folder / "config.pbtxt")
    _check_against_graph(config, static_onnx, inputs=["image"])
    assert config["name"] == "static" and int(config["max_batch_size"]) == 16
    assert [int(d) for d in config["input"][0]["dims"]] == [3, 64, 64]
    assert [int(d) for d in config["output"][4]["dims"]] == [1, 64, 64]
    assert config["dynamic_batching"]["preferred_batch_size"] == [8, 16]
    assert config["instance_group"] == [{"count": 1, "kind": "KIND_GPU"}]
    assert config["output"][1]["label_filename"] == "labels.txt"
    assert (folder / "labels.txt").read_text().splitlines() == [str(i) for i in range(10)]
    assert config["parameters"]["gradcam.target_layer"]["string_value"] == "layer2"
    assert json.loads(config["parameters"]["gradcam.input_size"]["string_value"]) == [64, 64]
    # an existing model is kept unless --overwrite
    assert main(["triton", str(static_onnx), "--out", str(repo)]) == 2
    assert capsys.readouterr().err == (  # the flag, never the Python argument
        f"gradcam: error: {folder / 'config.pbtxt'} already exists; pass --overwrite to replace it\n"
    )
    from gradcam_model.errors import OutputExistsError
    from gradcam_model.serving.triton import write_repository

    with pytest.raises(OutputExistsError, match=r"already exists; pass overwrite=True to replace it$"):
        write_repository(static_onnx, repo, "static")  # the Python API names its argument
    assert main(["triton", str(static_onnx), "--out", str(repo), "--overwrite", "--instance-kind", "auto"]) == 0
    assert _parse(folder / "config.pbtxt")["instance_group"] == [{"count": 1}]
    assert not [p for p in repo.rglob("*.tmp")]


def test_export_format_triton_class_input_dynamic_size(tmp_path, capsys):
    names = tmp_path / "names.json"
    names.write_text(json.dumps(NAMES), encoding="utf-8")
    repo = tmp_path / "repo"
    argv = ["export", "--arch", "resnet18", "--num-classes", "10", "--input-size", "64", "64", "--class-input"]
    argv += ["--class-names", str(names), "--format", "triton", "--out", str(repo), "--name", "pets"]
    code = main(argv)
    out = capsys.readouterr().out
    assert code == 0, out
    folder = repo / "pets"
    model = folder / "1" / "model.onnx"
    config = _parse(folder / "config.pbtxt")
    _check_against_graph(config, model, inputs=["image", "target_class"])
    assert [int(d) for d in config["input"][0]["dims"]] == [3, -1, -1]
    assert [int(d) for d in config["output"][4]["dims"]] == [1, -1, -1]
    assert config["input"][1]["data_type"] == "TYPE_INT64"
    assert (folder / "labels.txt").read_text(encoding="utf-8").splitlines() == NAMES
    assert json.loads(config["parameters"]["gradcam.class_names"]["string_value"]) == NAMES
    assert config["parameters"]["gradcam.class_input"]["string_value"] == "true"
    assert json.loads((repo / "parity.json").read_text())["ok"] is True


def test_triton_refuses_what_it_cannot_serve(tmp_path, capsys):
    (tmp_path / "model.pt").write_bytes(b"x")
    assert main(["triton", str(tmp_path / "model.pt"), "--out", str(tmp_path / "repo")]) == 2
    assert "takes .onnx artifacts" in capsys.readouterr().err
    (tmp_path / "plain.onnx").write_bytes(b"not onnx")
    assert main(["triton", str(tmp_path / "plain.onnx"), "--out", str(tmp_path / "repo")]) == 2
    assert "not a loadable ONNX model" in capsys.readouterr().err
    assert not (tmp_path / "repo").exists()


def test_python_backend_repository(static_onnx, tmp_path, capsys, monkeypatch):
    """--backend python: Triton's schema accepts the config; pictures or tensors in, overlays out; a README."""
    repo = tmp_path / "repo"
    env = tmp_path / "env"
    argv = ["triton", str(static_onnx), "--out", str(repo), "--backend", "python", "--execution-env", "env"]
    monkeypatch.chdir(tmp_path)  # a relative --execution-env
    assert main(argv) == 0
    out = capsys.readouterr().out
    folder = repo / "static"
    assert f"wrote {folder} (1/model.onnx, 1/model.py, README.md, config.pbtxt, labels.txt)" in out
    assert (folder / "1" / "model.onnx").read_bytes() == static_onnx.read_bytes()
    assert "from gradcam_model.serving.triton_model import TritonPythonModel" in (folder / "1" / "model.py").read_text()
    config = _parse(folder / "config.pbtxt")
    assert config["backend"] == "python" and "platform" not in config
    assert [(i["name"], i["data_type"], i["dims"], i.get("optional")) for i in config["input"]] == [
        ("image_bytes", "TYPE_STRING", ["1"], True),
        ("image", "TYPE_FP32", ["3", "64", "64"], True),
    ]
    graph = _graph(static_onnx)
    outputs = {o["name"]: (o["data_type"], [int(d) for d in o["dims"]]) for o in config["output"]}
    assert list(outputs) == ["logits", "probabilities", "class_index", "score", "cam", "overlay_png", "region"]
    for name in ("logits", "probabilities", "class_index", "score", "cam"):
        assert outputs[name] == graph[name], name
    assert outputs["overlay_png"] == ("TYPE_STRING", [1]) and outputs["region"] == ("TYPE_FP32", [4])
    assert config["dynamic_batching"]["preferred_batch_size"] == [4, 8]
    params = {k: v["string_value"] for k, v in config["parameters"].items()}
    assert params["EXECUTION_ENV_PATH"] == str(env)  # made absolute: Triton resolves from its own directory
    assert params["max_pixels"] == "64000000" and params["gradcam.target_layer"] == "layer2"
    readme = (folder / "README.md").read_text()
    assert "numpy>=1.24,<2" in readme and f"`EXECUTION_ENV_PATH` to `{env}`" in readme
    assert "`image_bytes` BYTES `[N, 1]`" in readme and "target_class" not in readme  # no class input here
    # back to the onnxruntime backend: the python backend's files go
    assert main(["triton", str(static_onnx), "--out", str(repo), "--overwrite"]) == 0
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) == [
        "1",
        "1/model.onnx",
        "config.pbtxt",
        "labels.txt",
    ]
    assert _parse(folder / "config.pbtxt")["platform"] == "onnxruntime_onnx"


def test_python_backend_with_a_class_input(tmp_path, artifacts):
    from gradcam_model.serving.triton import TritonOptions, write_repository

    options = TritonOptions(backend="python", max_pixels=1000, colormap="viridis")
    config = _parse(write_repository(artifacts["dynamic.onnx"], tmp_path, "pets", options=options))
    assert [(i["name"], i["dims"]) for i in config["input"]] == [
        ("image_bytes", ["1"]),
        ("image", ["3", "-1", "-1"]),
        ("target_class", ["1"]),  # [N, 1]: no reshape in the python backend
    ]
    assert [int(d) for d in config["output"][4]["dims"]] == [1, -1, -1]
    params = {k: v["string_value"] for k, v in config["parameters"].items()}
    assert params["max_pixels"] == "1000" and params["colormap"] == "viridis"
    assert "EXECUTION_ENV_PATH" not in params
    readme = (tmp_path / "pets" / "README.md").read_text()
    assert "No `EXECUTION_ENV_PATH` is set" in readme and "`target_class` INT64 `[N, 1]`" in readme


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--execution-env", "env"], "--execution-env is for --backend python"),
        (["--backend", "tensorrt"], "argument --backend: invalid choice: 'tensorrt'"),
    ],
)
def test_triton_backend_flags_refused(static_onnx, tmp_path, capsys, argv, message):
    assert main(["triton", str(static_onnx), "--out", str(tmp_path / "repo"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "repo").exists()


class _FakeTensor:
    def __init__(self, name, array):
        self.name, self.array = name, array

    def as_numpy(self):
        return self.array


class _FakeRequest:
    def __init__(self, inputs: dict, outputs=("logits", "probabilities", "class_index", "score", "cam")):
        self.inputs, self.outputs = inputs, list(outputs)

    def requested_output_names(self):
        return self.outputs


class _FakeUtils:
    """The few names of ``triton_python_backend_utils`` the model uses, recording what it answers."""

    class TritonError(Exception):
        INVALID_ARG = 3

        def __init__(self, message, code=None):
            super().__init__(message)
            self.code = code

    class InferenceResponse:
        def __init__(self, output_tensors, error=None):
            self.outputs = {t.name: t.array for t in output_tensors}
            self.error = error

    class Logger:
        @staticmethod
        def log_info(message):
            pass

    Tensor = _FakeTensor

    @staticmethod
    def get_input_tensor_by_name(request, name):
        return _FakeTensor(name, request.inputs[name]) if name in request.inputs else None


def test_python_backend_model_answers_each_request_of_a_batch(artifacts, tmp_path, monkeypatch):
    """One execute() with several requests: good ones run together and are split back; a bad one gets its error."""
    import cv2
    import numpy as np

    from gradcam_model.runtime import decode_image, load_explainer, preprocess
    from gradcam_model.serving.triton import TritonOptions, write_repository
    from gradcam_model.serving.triton_model import TritonPythonModel

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _FakeUtils)
    monkeypatch.delenv("OPENCV_IO_MAX_IMAGE_PIXELS", raising=False)  # the model sets it: undone after the test
    config = write_repository(artifacts["dynamic.onnx"], tmp_path, "pets", options=TritonOptions(backend="python"))
    model = TritonPythonModel()
    model_config = {"parameters": {k: {"string_value": v} for k, v in (("max_pixels", "100000"), ("alpha", "0.4"))}}
    args = {"model_config": json.dumps(model_config), "model_repository": str(config.parent), "model_version": "1"}
    model.initialize(args)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 64, 64)).astype(np.float32)
    picture = cv2.imencode(".png", rng.integers(0, 256, (30, 50, 3), dtype=np.uint8))[1].tobytes()
    requests = [
        _FakeRequest({"image": x, "target_class": np.array([[4], [-1]])}),
        _FakeRequest({"image_bytes": np.array([[b"junk"]], dtype=np.object_)}),
        _FakeRequest(
            {"image_bytes": np.array([[picture]], dtype=np.object_)}, outputs=("cam", "overlay_png", "region")
        ),
        _FakeRequest({"image": x[:1], "target_class": np.array([[99]])}),
    ]
    answers = model.execute(requests)  # requests 0 and 2 run as one batch of 3 (both 64x64)
    explainer = load_explainer(artifacts["dynamic.onnx"], providers=["CPUExecutionProvider"])
    expected = explainer(x, np.array([4, -1]))
    for name, want in zip(("logits", "probabilities", "class_index", "score", "cam"), expected.outputs()):
        # 1e-5: a batch of 3 against our batch of 2 (ONNX Runtime's kernels block by batch size)
        np.testing.assert_allclose(answers[0].outputs[name], want, rtol=0, atol=1e-5, err_msg=name)
    assert answers[1].error.code == _FakeUtils.TritonError.INVALID_ARG
    assert str(answers[1].error).startswith('input "image_bytes"[0]: not a readable image')
    rgb = decode_image(picture)
    np.testing.assert_allclose(
        answers[2].outputs["cam"], explainer(preprocess(rgb, explainer.metadata)[None]).cam, rtol=0, atol=1e-5
    )
    assert answers[2].outputs["region"].tolist() == [[0.0, 0.0, 50.0, 30.0]]
    assert answers[2].outputs["overlay_png"].shape == (1, 1)
    assert cv2.imdecode(np.frombuffer(answers[2].outputs["overlay_png"][0, 0], np.uint8), cv2.IMREAD_COLOR).shape == (
        30,
        50,
        3,
    )
    assert (
        str(answers[3].error)
        == 'input "target_class"[0] = 99 is out of range; expected 0..9, or -1 for the top prediction'
    )
    assert answers[3].outputs == {}


def test_python_backend_model_serves_a_guided_artifacts_sixth_output(tmp_path, monkeypatch):
    """A guided-gradcam artifact: the python model answers "guided" beside the five, the overlay from "cam"."""
    import numpy as np
    import torch
    from torch import nn

    from gradcam_model import GradCAMModel
    from gradcam_model.runtime import load_explainer
    from gradcam_model.serving.triton import TritonOptions, write_repository
    from gradcam_model.serving.triton_model import TritonPythonModel

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()  # fmt: skip
    artifact = export_onnx(GradCAMModel(net, "2", method="guided-gradcam", example_input=torch.randn(2, 3, 16, 16)),
                           tmp_path / "guided.onnx")  # fmt: skip
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _FakeUtils)
    monkeypatch.delenv("OPENCV_IO_MAX_IMAGE_PIXELS", raising=False)
    config = write_repository(artifact, tmp_path / "repo", "guided", options=TritonOptions(backend="python"))
    assert 'name: "guided"' in config.read_text()
    model = TritonPythonModel()
    model.initialize({"model_config": "{}", "model_repository": str(config.parent), "model_version": "1"})
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    (answer,) = model.execute([_FakeRequest({"image": x}, outputs=("cam", "guided", "overlay_png", "region"))])
    assert answer.error is None
    expected = load_explainer(artifact, providers=["CPUExecutionProvider"])(x)
    assert expected.guided is not None and float(np.abs(expected.guided).max()) > 0
    np.testing.assert_allclose(answer.outputs["guided"], expected.guided, rtol=0, atol=1e-6)
    np.testing.assert_allclose(answer.outputs["cam"], expected.cam, rtol=0, atol=1e-6)
    assert answer.outputs["overlay_png"].shape == (2, 1)
