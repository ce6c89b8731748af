"""``gradcam serve`` with clients nobody here wrote: tritonclient (HTTP and gRPC) and KServe's own clients.

One server for the module runs a small class-input artifact that records a centre crop
(shorter side, crop_pct 0.5, bicubic), so the explained region of a picture is a part
of it. Oracle: the in-process explainer on ``runtime.preprocess`` of the same decoded
picture (1e-6), ``explained_region`` for the region. KServe's clients run in a
subprocess: kserve and ``tritonclient.grpc`` register the same protobuf messages and
cannot share a process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_preprocessing import PICTURES, _wrapper
from test_serve import ROOT, _b64, _free_port, pytestmark, running_server  # noqa: F401

import gradcam_model as gc
from gradcam_model.contract import Preprocessing
from gradcam_model.runtime import decode_image, explained_region, load_explainer, overlay, preprocess

tritonclient_http = pytest.importorskip("tritonclient.http")
tritonclient_grpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

CROP = Preprocessing(resize="shorter", crop_pct=0.5, interpolation="bicubic")


def _png(array: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", array)
    assert ok
    return data.tobytes()


def _odd_pictures() -> dict[str, bytes]:
    """Encoded odd pictures: tall, wide, tiny, one grey channel, RGBA with transparency, 16-bit."""
    bgr = {k: cv2.cvtColor(PICTURES[k], cv2.COLOR_RGB2BGR) for k in ("tall", "wide", "tiny", "chelsea")}
    rgba = cv2.cvtColor(bgr["chelsea"][:120, :90], cv2.COLOR_BGR2BGRA)
    rgba[:40, :, 3] = 0  # transparent rows: decoded as colour, alpha dropped (as load_image does)
    sixteen = (bgr["wide"][:, :200].astype(np.uint16) * 257 + 128).astype(np.uint16)
    return {
        "tall": _png(bgr["tall"]),
        "wide": _png(bgr["wide"]),
        "tiny": _png(bgr["tiny"]),
        "grey": _png(PICTURES["grey"][::4, ::3, 0].copy()),
        "rgba": _png(rgba),
        "16bit": _png(sixteen),
    }


ODD = _odd_pictures()


@pytest.fixture(scope="module")
def crop_artifact(tmp_path_factory):
    wrapper = _wrapper(preprocess=CROP, class_input=True, class_names=["ant", "bee", "cat"])
    return gc.export_onnx(wrapper, tmp_path_factory.mktemp("clients") / "crop.onnx")


@pytest.fixture(scope="module")
def explainer(crop_artifact):
    return load_explainer(crop_artifact, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def server(crop_artifact, tmp_path_factory):
    log = tmp_path_factory.mktemp("clients-log") / "server.log"
    with running_server(crop_artifact, log, "--max-instances", "8", name="crop", profile=False) as server:
        yield server


@pytest.fixture(scope="module")
def http(server):
    client = tritonclient_http.InferenceServerClient(f"127.0.0.1:{server.port}")
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc(server):
    client = tritonclient_grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    yield client
    client.close()


def _expected(explainer, pictures: list[bytes], classes=None):
    decoded = [decode_image(p) for p in pictures]
    result = explainer(np.stack([preprocess(rgb, explainer.metadata) for rgb in decoded]), classes)
    regions = np.asarray([explained_region(rgb.shape, explainer.metadata) for rgb in decoded], np.float64)
    return decoded, result, regions


def _assert_outputs(got: dict, result, regions) -> None:
    np.testing.assert_array_equal(got["class_index"], result.class_index)
    for name in ("logits", "probabilities", "score", "cam"):
        np.testing.assert_allclose(got[name], getattr(result, name), rtol=0, atol=1e-6, err_msg=name)
    assert got["region"].dtype == np.float32  # v2's region is an FP32 tensor: the float64 region rounded
    np.testing.assert_array_equal(got["region"], np.asarray(regions, np.float32))


def test_tritonclient_http_reads_the_model(http, explainer):
    assert http.is_server_live() and http.is_server_ready()
    assert http.is_model_ready("crop") and http.is_model_ready("crop", "1")
    assert not http.is_model_ready("crop", "2")
    meta = http.get_model_metadata("crop", "1")
    assert meta["versions"] == ["1"] and meta["inputs"][1]["name"] == "image_bytes"
    config = http.get_model_config("crop", "1")
    assert config["max_batch_size"] == 8 and config["input"][0] == {
        "name": "image", "data_type": "TYPE_FP32", "dims": [3, -1, -1], "optional": True
    }  # fmt: skip
    assert json.loads(config["parameters"]["gradcam.preprocessing"]["string_value"])["crop_pct"] == 0.5
    assert http.get_model_repository_index() == [{"name": "crop", "version": "1", "state": "READY"}]
    before = http.get_inference_statistics("crop", "1")["model_stats"][0]["inference_stats"]["success"]["count"]

    x = np.random.default_rng(1).standard_normal((3, 3, 32, 40)).astype(np.float32)
    target = np.array([-1, 2, 0], np.int64)
    expected = explainer(x, target)
    for binary in (False, True):  # JSON without a content type, and the binary extension
        inputs = [tritonclient_http.InferInput("image", list(x.shape), "FP32"),
                  tritonclient_http.InferInput("target_class", [3], "INT64")]  # fmt: skip
        inputs[0].set_data_from_numpy(x, binary_data=binary)
        inputs[1].set_data_from_numpy(target, binary_data=binary)
        names = ["logits", "probabilities", "class_index", "score", "cam", "region"]
        outputs = [tritonclient_http.InferRequestedOutput(n, binary_data=binary) for n in names]
        answer = http.infer("crop", inputs, model_version="1", outputs=outputs, request_id=f"r{binary}")
        assert answer.get_response()["id"] == f"r{binary}" and answer.get_response()["model_version"] == "1"
        _assert_outputs({n: answer.as_numpy(n) for n in names}, expected, [[0, 0, 40, 32]] * 3)
    after = http.get_inference_statistics("crop")["model_stats"][0]
    assert after["inference_stats"]["success"]["count"] == before + 2 and after["version"] == "1"


HTTP_ERRORS = [
    # (what, call, status, message fragment)
    ("a version that does not exist", lambda c: c.get_model_metadata("crop", "2"), "404", 'no version "2"'),
    ("an unknown model", lambda c: c.get_model_config("zebra"), "404", "zebra"),
    ("a wrong datatype", "INT32", "400", 'input "image" must be FP32 or FP64, got INT32'),
    ("a wrong shape", [1, 32, 32], "400", 'input "image" must have shape [-1, 3, -1, -1]'),
    ("not a picture", b"hello", "400", 'input "image_bytes"[0]: not a readable image'),
]


@pytest.mark.parametrize("what, call, status, message", HTTP_ERRORS, ids=[e[0] for e in HTTP_ERRORS])
def test_tritonclient_http_sees_our_errors(http, server, what, call, status, message):
    if callable(call):
        request = lambda: call(http)  # noqa: E731
    elif isinstance(call, bytes):
        tensor = tritonclient_http.InferInput("image_bytes", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([call], dtype=object))
        request = lambda: http.infer("crop", [tensor])  # noqa: E731
    else:
        shape, dtype = (call, "FP32") if isinstance(call, list) else ([1, 3, 8, 8], call)
        tensor = tritonclient_http.InferInput("image", shape, dtype)
        tensor.set_data_from_numpy(np.zeros(shape, np.float32 if dtype == "FP32" else np.int32))
        request = lambda: http.infer("crop", [tensor])  # noqa: E731
    with pytest.raises(InferenceServerException) as caught:
        request()
    assert str(caught.value.status()) == status and message in caught.value.message()
    assert http.is_model_ready("crop")


def test_tritonclient_grpc_pictures_and_compact_outputs(grpc, explainer):
    assert grpc.is_server_ready() and grpc.is_model_ready("crop", "1")
    assert grpc.get_model_metadata("crop", "1").versions == ["1"]
    pictures = [ODD["wide"], ODD["tall"]]
    decoded, expected, regions = _expected(explainer, pictures, np.array([1, -1]))
    tensors = [tritonclient_grpc.InferInput("image_bytes", [2], "BYTES"),
               tritonclient_grpc.InferInput("target_class", [2], "INT64")]  # fmt: skip
    tensors[0].set_data_from_numpy(np.array(pictures, dtype=object))
    tensors[1].set_data_from_numpy(np.array([1, -1], np.int64))
    names = ["logits", "probabilities", "class_index", "score", "cam", "region", "cam_uint8", "cam_png", "overlay_png"]
    answer = grpc.infer("crop", tensors, model_version="1",
                        outputs=[tritonclient_grpc.InferRequestedOutput(n) for n in names])  # fmt: skip
    got = {n: answer.as_numpy(n) for n in names}
    _assert_outputs(got, expected, regions)
    assert got["class_index"][0, 0] == 1
    levels = np.rint(np.clip(expected.cam, 0, 1) * 255).astype(np.uint8)
    assert got["cam_uint8"].dtype == np.uint8
    np.testing.assert_array_equal(got["cam_uint8"], levels)
    for j in range(2):
        grey = cv2.imdecode(np.frombuffer(got["cam_png"][j, 0], np.uint8), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(grey, levels[j, 0])  # 8-bit, one channel, lossless
        drawn = cv2.cvtColor(cv2.imdecode(np.frombuffer(got["overlay_png"][j, 0], np.uint8), 1), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(drawn, overlay(decoded[j], expected.cam[j, 0], region=tuple(regions[j])))


def test_tritonclient_grpc_errors(grpc):
    tensor = tritonclient_grpc.InferInput("image", [1, 4, 8, 8], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 4, 8, 8), np.float32))
    with pytest.raises(InferenceServerException) as caught:
        grpc.infer("crop", [tensor])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert caught.value.message().endswith('input "image" must have shape [-1, 3, -1, -1] (-1: any), got [1, 4, 8, 8]')
    with pytest.raises(InferenceServerException) as caught:
        grpc.get_model_metadata("crop", "7")
    assert caught.value.status() == "StatusCode.NOT_FOUND" and 'versions: ["1"]' in caught.value.message()
    with pytest.raises(InferenceServerException) as caught:
        grpc.get_model_config("zebra")
    assert caught.value.status() == "StatusCode.NOT_FOUND" and "zebra" in caught.value.message()
    assert grpc.is_model_ready("crop")


def test_tritonclient_grpc_config_index_and_statistics_equal_http(grpc, http):
    """The three RPCs kserve's service lacks, hand-encoded, read by tritonclient's own message classes."""
    config = grpc.get_model_config("crop", "1", as_json=True)["config"]
    expected = http.get_model_config("crop")
    assert (config["name"], config["backend"], config["max_batch_size"]) == ("crop", "gradcam", 8)
    assert config["version_policy"] == {"specific": {"versions": ["1"]}}  # int64 as text in protobuf's JSON
    for kind in ("input", "output"):
        got = [(t["name"], t["data_type"], [int(d) for d in t["dims"]], "reshape" in t, t.get("optional", False))
               for t in config[kind]]  # fmt: skip
        want = [(t["name"], t["data_type"], t["dims"], "reshape" in t, t.get("optional", False))
                for t in expected[kind]]  # fmt: skip
        assert got == want
    assert config["parameters"] == expected["parameters"]
    assert grpc.get_model_repository_index(as_json=True) == {
        "models": [{"name": "crop", "version": "1", "state": "READY"}]
    }
    tensor = tritonclient_grpc.InferInput("image", [1, 3, 8, 8], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 3, 8, 8), np.float32))
    grpc.infer("crop", [tensor])  # at least one counted
    by_http = http.get_inference_statistics("crop")["model_stats"][0]
    by_grpc = grpc.get_inference_statistics("crop", "1", as_json=True)["model_stats"][0]
    assert int(by_grpc["inference_count"]) == by_http["inference_count"] > 0
    assert int(by_grpc["inference_stats"]["success"]["count"]) == by_http["inference_stats"]["success"]["count"]


@pytest.mark.parametrize("name", sorted(ODD))
def test_odd_pictures_answer_as_in_process_with_their_region(server, explainer, http, name):
    """v1 :explain and v2 image_bytes on tall, wide, tiny, grey, RGBA and 16-bit pictures."""
    decoded, expected, regions = _expected(explainer, [ODD[name]])
    if name in ("tall", "wide"):
        assert regions[0][2] < decoded[0].shape[1] or regions[0][3] < decoded[0].shape[0]  # a crop, not all
    body = {"instances": [{"b64": _b64(ODD[name])}], "output": "array"}
    status, answer = server.request("/v1/models/crop:explain", body)
    assert status == 200, answer
    record = answer["explanations"][0]
    assert record["region"] == [float(v) for v in regions[0]]
    assert record["predicted_index"] == int(expected.probabilities[0].argmax())
    assert record["explained"][0]["index"] == int(expected.class_index[0, 0])
    np.testing.assert_allclose(record["explained"][0]["cam"], expected.cam[0, 0], rtol=0, atol=1e-6)

    tensor = tritonclient_http.InferInput("image_bytes", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([ODD[name]], dtype=object))
    answer = http.infer("crop", [tensor])
    _assert_outputs({n: answer.as_numpy(n) for n in ("logits", "probabilities", "class_index", "score", "cam",
                                                       "region")}, expected, regions)  # fmt: skip


def test_v1_compact_maps(server, explainer):
    decoded, expected, regions = _expected(explainer, [ODD["wide"]])
    levels = np.rint(np.clip(expected.cam[0, 0], 0, 1) * 255).astype(np.uint8)
    answers = {}
    for kind in ("map_png", "png", "jpeg"):
        status, answer = server.request("/v1/models/crop:explain", {"instances": [{"b64": _b64(ODD["wide"])}],
                                                                    "output": kind})  # fmt: skip
        assert status == 200, answer
        answers[kind] = np.frombuffer(__import__("base64").b64decode(answer["explanations"][0]["explained"][0][kind]),
                                      np.uint8)  # fmt: skip
    np.testing.assert_array_equal(cv2.imdecode(answers["map_png"], cv2.IMREAD_UNCHANGED), levels)
    drawn = overlay(decoded[0], expected.cam[0, 0], region=tuple(regions[0]))
    np.testing.assert_array_equal(cv2.cvtColor(cv2.imdecode(answers["png"], 1), cv2.COLOR_BGR2RGB), drawn)
    jpeg = cv2.cvtColor(cv2.imdecode(answers["jpeg"], 1), cv2.COLOR_BGR2RGB)
    assert jpeg.shape == drawn.shape and np.abs(jpeg.astype(int) - drawn).mean() < 4  # lossy, quality 90


def _post(port: int, path: str, body: bytes, headers: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_v2_bodies_without_a_json_content_type_and_versioned_paths(server):
    x = np.zeros((1, 3, 16, 16), np.float32)
    body = json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 16, 16],
                                   "data": x.ravel().tolist()}], "outputs": [{"name": "score"}]}).encode()  # fmt: skip
    for path in ("/v2/models/crop/infer", "/v2/models/crop/versions/1/infer"):
        # urllib sends curl -d's form content type unless told; Python's http.client none
        for headers in ({}, {"Content-Type": "application/x-www-form-urlencoded"}):
            status, answer = _post(server.port, path, body, headers)
            assert status == 200 and [o["name"] for o in answer["outputs"]] == ["score"], answer
    status, answer = _post(server.port, "/v2/models/crop/versions/2/infer", body, {})
    assert (status, answer) == (404, {"error": 'model "crop" has no version "2"; its versions: ["1"]'})
    status, answer = _post(server.port, "/v2/models/crop/infer", body.replace(b'"score"', b'"cam_png"'), {})
    assert status == 400 and '"binary_data": true' in answer["error"]


_KSERVE_CLIENTS = r"""
import asyncio, base64, json, sys
import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

async def main(http_port, grpc_port, picture):
    out = {}
    x = np.random.default_rng(5).standard_normal((2, 3, 32, 32)).astype(np.float32)
    rest = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
    tensor = InferInput("image", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=False)
    answer = await rest.infer(f"http://127.0.0.1:{http_port}", InferRequest(model_name="crop", infer_inputs=[tensor]),
                              model_name="crop")
    out["rest_cam"] = answer.outputs[4].as_numpy().tolist()
    v1 = InferenceRESTClient(RESTConfig(protocol="v1", retries=0))
    answer = await v1.explain(f"http://127.0.0.1:{http_port}", "crop",
                              {"instances": [{"b64": picture}], "output": "map_png"})
    out["v1_region"] = answer["explanations"][0]["region"]
    try:
        await v1.infer(f"http://127.0.0.1:{http_port}", {"instances": []}, model_name="crop")
    except Exception as exc:
        out["v1_error"] = str(exc)
    await rest.close(); await v1.close()
    grpc = InferenceGRPCClient(f"127.0.0.1:{grpc_port}", retries=0)
    tensor = InferInput("image", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    answer = await grpc.infer(InferRequest(model_name="crop", infer_inputs=[tensor]))
    out["grpc_cam"] = answer.outputs[4].as_numpy().tolist()
    tensor = InferInput("image", [1], "FP32")
    tensor.set_data_from_numpy(np.zeros(1, np.float32), binary_data=True)
    try:
        await grpc.infer(InferRequest(model_name="crop", infer_inputs=[tensor]))
    except Exception as exc:
        out["grpc_error"] = [str(exc.code()), exc.details()]
    await grpc.close()
    print(json.dumps(out))

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]))
"""


def test_kserve_clients(server, explainer):
    """KServe's InferenceRESTClient (v1 and v2) and InferenceGRPCClient, in a process of their own."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", _KSERVE_CLIENTS, str(server.port), str(server.grpc_port), _b64(ODD["tall"])],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    x = np.random.default_rng(5).standard_normal((2, 3, 32, 32)).astype(np.float32)
    expected = explainer(x)
    np.testing.assert_allclose(out["rest_cam"], expected.cam, rtol=0, atol=1e-6)
    np.testing.assert_allclose(out["grpc_cam"], expected.cam, rtol=0, atol=1e-6)
    _, _, regions = _expected(explainer, [ODD["tall"]])
    assert out["v1_region"] == [float(v) for v in regions[0]]
    assert "400 Bad Request" in out["v1_error"] and '"instances" must be a non-empty list' in out["v1_error"]
    assert out["grpc_error"] == ["StatusCode.INVALID_ARGUMENT", 'input "image" must have shape [-1, 3, -1, -1] '
                                 "(-1: any), got [1]"]  # fmt: skip


def test_errors_are_logged_as_one_line(server):
    log = server.log.read_text()
    assert 'bad request: input "image_bytes"[0]: not a readable image' in log
    assert 'bad gRPC request: input "image" must have shape' in log
    assert "Traceback" not in log


@pytest.mark.parametrize("which", ["--port", "--grpc-port"])
def test_a_port_in_use_is_one_line_and_exit_3(crop_artifact, which):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        ports = {"--port": str(_free_port()), "--grpc-port": str(_free_port()), which: str(busy)}
        argv = [sys.executable, "-m", "gradcam_model", "serve", str(crop_artifact)]
        argv += [item for pair in ports.items() for item in pair]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 3, done.stderr
    kind = "HTTP" if which == "--port" else "gRPC"
    assert done.stderr.strip().splitlines() == [
        f"gradcam: error: {kind} port {busy} on 127.0.0.1 is in use; choose another with {which}"
        + (" (0: no gRPC)" if kind == "gRPC" else "")
    ]


def test_grpc_port_0_opens_no_grpc_endpoint(crop_artifact, tmp_path):
    from test_serve import _listening

    with running_server(crop_artifact, tmp_path / "server.log", "--grpc-port", "0", name="crop", profile=False) as s:
        assert _listening(s.process.pid) == [f"127.0.0.1:{s.port}"]
        assert Path(s.log).read_text().count("grpc://") == 0
