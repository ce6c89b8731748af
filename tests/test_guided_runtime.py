"""The guided output on the serve side: pictures (pytorch-grad-cam's deprocess_image rule),
``gradcam explain``'s ``guided/`` folder, and the server's v1 and v2 answers."""

from __future__ import annotations

import base64

import cv2
import numpy as np
import pytest
import torch
from pytorch_grad_cam.utils.image import deprocess_image
from test_serve import _free_port, _jpeg, _v2_body, _v2_outputs, running_server  # noqa: F401
from torch import nn

import gradcam_model as gc
from gradcam_model.errors import InputError
from gradcam_model.runtime import explain_files, load_explainer, load_image, preprocess
from gradcam_model.runtime.visualize import guided_picture
from gradcam_model.serving.v2 import requested_outputs

pytestmark = [pytest.mark.xdist_group("serve")]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()  # fmt: skip
    wrapper = gc.GradCAMModel(model, "3", method="guided-gradcam", example_input=torch.randn(1, 3, 64, 64))
    return gc.export_onnx(wrapper, tmp_path_factory.mktemp("guided") / "guided.onnx")


@pytest.fixture(scope="module")
def explainer(artifact):
    return load_explainer(artifact, providers=["CPUExecutionProvider"])


def test_guided_picture_is_pytorch_grad_cams_deprocess_image():
    guided = np.random.default_rng(0).standard_normal((3, 20, 24)).astype(np.float32) * 1e-3
    picture = guided_picture(guided)
    assert picture.dtype == np.uint8 and picture.shape == (20, 24, 3)
    np.testing.assert_array_equal(picture, deprocess_image(guided.transpose(1, 2, 0)))
    np.testing.assert_array_equal(guided_picture(guided, channel_order="BGR"), picture[:, :, ::-1])
    assert np.all(guided_picture(np.zeros((3, 4, 4), np.float32)) == 127)  # no gradient: mid grey
    with pytest.raises(InputError, match=r"guided must be a \[3, H, W\] gradient image, got shape \(4, 4\)"):
        guided_picture(np.zeros((4, 4)))


def test_explain_writes_a_guided_picture_per_overlay(explainer, tmp_path):
    folder = tmp_path / "pictures"
    folder.mkdir()
    for i in range(2):
        (folder / f"p{i}.jpg").write_bytes(_jpeg(i, size=(64, 64)))
    summary = explain_files(explainer, [folder], tmp_path / "out", overlay_format="png", progress=False)
    assert summary.explained == 2
    for i in range(2):
        rgb = load_image(folder / f"p{i}.jpg")
        result = explainer(preprocess(rgb, explainer.metadata)[None])
        written = cv2.imread(str(tmp_path / "out" / "guided" / "pictures" / f"p{i}.png"))[:, :, ::-1]
        np.testing.assert_array_equal(written, guided_picture(result.guided[0, 0]))
        assert (tmp_path / "out" / "overlays" / "pictures" / f"p{i}.png").exists()


def test_the_server_answers_the_guided_output(artifact, explainer, tmp_path):
    picture = _jpeg(5, size=(64, 64))
    images = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with running_server(artifact, tmp_path / "server.log", name="fish", profile=False) as server:
        status, answer = server.request("/v1/models/fish:explain", {"instances": [{"b64": base64.b64encode(picture)
                                                                                   .decode()}]})  # fmt: skip
        assert status == 200, answer
        row = answer["explanations"][0]["explained"][0]
        rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(picture, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        expected = explainer(preprocess(rgb, explainer.metadata)[None])
        got = cv2.imdecode(np.frombuffer(base64.b64decode(row["guided_png"]), np.uint8), cv2.IMREAD_COLOR)
        np.testing.assert_array_equal(got[:, :, ::-1], guided_picture(expected.guided[0, 0]))

        status, answer = server.request("/v1/models/fish:explain", {"instances": images.tolist(), "output": "array"})
        assert status == 200, answer
        expected = explainer(images)
        for j in range(2):
            got = np.asarray(answer["explanations"][j]["explained"][0]["guided"])
            np.testing.assert_allclose(got, expected.guided[j, 0], rtol=0, atol=1e-6)

        body = {**_v2_body(images), "outputs": [{"name": "cam"}, {"name": "guided"}]}
        status, answer = server.request("/v2/models/fish/infer", body)
        assert status == 200, answer
        got = _v2_outputs(answer)
        assert [o["name"] for o in answer["outputs"]] == ["cam", "guided"]
        np.testing.assert_allclose(got["guided"], expected.guided, rtol=0, atol=1e-6)
        status, answer = server.request("/v2/models/fish")
        assert {"name": "guided", "datatype": "FP32", "shape": [-1, 1, 3, 64, 64]} in answer["outputs"]


def test_other_artifacts_have_no_guided_output(explainer):
    plain = type(explainer.metadata)(**{**explainer.metadata.__dict__, "method": "gradcam"})
    with pytest.raises(InputError, match=r"unknown output\(s\) \['guided'\]"):
        requested_outputs(["guided"], plain)
    assert requested_outputs(["guided"], explainer.metadata) == ["guided"]
    assert "guided" not in requested_outputs(None, explainer.metadata)  # 3x the maps: only when asked for
