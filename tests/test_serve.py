"""``gradcam serve``: one real server process on 127.0.0.1 for this module, real HTTP requests.

The server runs the class-input resnet18 artifact (dynamic size, class names) exported
here; its answers are compared with the in-process explainer and with ``explain_files``.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from gradcam_model import GradCAMModel, export_onnx
from gradcam_model.runtime import explain_files, load_explainer, load_image, preprocess

# kserve only in the server process: this one may import tritonclient (the two clash).
# kserve is a [dev] dependency: without it the server does not start and these tests fail.
pytestmark = [pytest.mark.xdist_group("serve")]

ROOT = Path(__file__).resolve().parent.parent
NAMES = ["tench", "goldfish", "shark", "tiger shark", "hammerhead", "ray", "stingray", "cock", "hen", "ostrich"]
MAX_INSTANCES = 8
MAX_PIXELS = 1_000_000
START_TIMEOUT = 90  # seconds: a cold start on a loaded 2-core machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _jpeg(seed: int, size=(96, 72)) -> bytes:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    image = cv2.resize(coarse, size, interpolation=cv2.INTER_CUBIC)
    ok, buf = cv2.imencode(".jpg", image)
    assert ok
    return buf.tobytes()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class Server:
    def __init__(self, process: subprocess.Popen, port: int, log: Path, artifact: Path, grpc_port: int = 0) -> None:
        self.process, self.port, self.log, self.artifact = process, port, log, artifact
        self.grpc_port = grpc_port

    def request(self, path: str, body=None, *, raw: bytes | None = None, headers=None, timeout: float = 60):
        """(status, decoded JSON) of one request; POST when there is a body."""
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=data,
            headers={"content-type": "application/json", **(headers or {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, resnet18):
    wrapper = GradCAMModel(
        resnet18,
        "layer4",
        example_input=torch.randn(1, 3, 64, 64),
        class_input=True,
        class_names=NAMES,
        architecture="resnet18",
    )
    return export_onnx(wrapper, tmp_path_factory.mktemp("serve") / "fish.onnx")


@contextlib.contextmanager
def running_server(artifact: Path, log: Path, *flags: str, name: str = "fish", profile: bool = True):
    """A ``gradcam serve`` process on free HTTP and gRPC ports of 127.0.0.1, ready; stopped at exit."""
    port, grpc_port = _free_port(), _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE"}
    if profile:
        env["PYTHONPROFILEIMPORTTIME"] = "1"
    argv = [sys.executable, "-m", "gradcam_model", "serve", str(artifact), "--name", name, "--port", str(port)]
    argv += ["--grpc-port", str(grpc_port), *flags]
    with open(log, "wb") as sink:
        process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    server = Server(process, port, log, artifact, grpc_port)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"the server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                if server.request("/v2/health/ready", timeout=2)[0] == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"the server was not ready in {START_TIMEOUT} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.25)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


@pytest.fixture(scope="module")
def server(artifact, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    flags = ["--max-instances", str(MAX_INSTANCES), "--max-body-mb", "1", "--max-pixels", str(MAX_PIXELS)]
    with running_server(artifact, log, *flags) as server:
        yield server


@pytest.fixture(scope="module")
def explainer(artifact):
    return load_explainer(artifact, providers=["CPUExecutionProvider"])


def _listening(pid: int) -> list[str]:
    """Local addresses (ip:port) of the TCP sockets ``pid`` listens on, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                address, port = fields[1].split(":")
                if table == "tcp":
                    ip = socket.inet_ntop(socket.AF_INET, bytes.fromhex(address)[::-1])
                else:
                    words = [bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, 32, 8)]
                    ip = socket.inet_ntop(socket.AF_INET6, b"".join(words))
                found.append(f"{ip}:{int(port, 16)}")
    return found


def test_listens_on_loopback_only(server):
    """HTTP and gRPC, both on 127.0.0.1 (gRPC's IPv6 socket holds the IPv4-mapped loopback address only)."""
    assert sorted(_listening(server.process.pid)) == sorted(
        [f"127.0.0.1:{server.port}", f"::ffff:127.0.0.1:{server.grpc_port}"]
    )
    ss = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout.splitlines()
    ours = [line.split()[3] for line in ss if f"pid={server.process.pid}," in line]
    assert sorted(ours) == sorted([f"127.0.0.1:{server.port}", f"[::ffff:127.0.0.1]:{server.grpc_port}"])
    log = server.log.read_text()
    assert f"on http://127.0.0.1:{server.port} and grpc://127.0.0.1:{server.grpc_port}; " in log
    assert "ONNX Runtime runs it on CPUExecutionProvider" in log


def test_server_process_never_imports_torch(server):
    imported = [line.rsplit("|", 1)[-1].strip() for line in server.log.read_text().splitlines() if "|" in line]
    assert "kserve" in imported and "onnxruntime" in imported
    assert not [m for m in imported if m == "torch" or m.startswith("torch.")]
    assert "libtorch" not in Path(f"/proc/{server.process.pid}/maps").read_text()


def test_health_and_metadata(server, explainer):
    assert server.request("/v2/health/ready") == (200, {"ready": True})
    assert server.request("/v2/models/fish/ready")[1]["ready"] is True
    status, meta = server.request("/v2/models/fish")
    assert status == 200 and meta["name"] == "fish"
    assert meta["versions"] == ["1"]
    assert meta["inputs"] == [
        {"name": "image", "datatype": "FP32", "shape": [-1, 3, -1, -1]},
        {"name": "image_bytes", "datatype": "BYTES", "shape": [-1]},
        {"name": "target_class", "datatype": "INT64", "shape": [-1]},
    ]
    assert [(o["name"], o["datatype"], o["shape"]) for o in meta["outputs"]] == [
        ("logits", "FP32", [-1, 10]),
        ("probabilities", "FP32", [-1, 10]),
        ("class_index", "INT64", [-1, 1]),
        ("score", "FP32", [-1, 1]),
        ("cam", "FP32", [-1, 1, -1, -1]),
        ("region", "FP32", [-1, 4]),
        ("cam_uint8", "UINT8", [-1, 1, -1, -1]),
        ("cam_png", "BYTES", [-1, 1]),
        ("overlay_jpeg", "BYTES", [-1, 1]),
        ("overlay_png", "BYTES", [-1, 1]),
    ]


def _v2_body(images: np.ndarray, target=None) -> dict:
    inputs = [{"name": "image", "datatype": "FP32", "shape": list(images.shape), "data": images.ravel().tolist()}]
    if target is not None:
        inputs.append({"name": "target_class", "datatype": "INT64", "shape": [len(target)], "data": list(target)})
    return {"id": "req-1", "inputs": inputs}


def _v2_outputs(answer: dict) -> dict[str, np.ndarray]:
    return {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in answer["outputs"]}


def test_v2_infer_equals_in_process_explainer(server, explainer):
    images = np.random.default_rng(3).standard_normal((3, 3, 64, 80)).astype(np.float32)
    target = [-1, 2, 7]
    status, answer = server.request("/v2/models/fish/infer", _v2_body(images, target))
    assert status == 200, answer
    assert answer["id"] == "req-1" and answer["model_name"] == "fish"
    assert [o["name"] for o in answer["outputs"]] == [
        "logits",
        "probabilities",
        "class_index",
        "score",
        "cam",
        "region",
    ]
    got = _v2_outputs(answer)
    np.testing.assert_array_equal(got["region"], [[0, 0, 80, 64]] * 3)  # a tensor: all of it
    expected = explainer(images, np.asarray(target))
    np.testing.assert_array_equal(got["class_index"], expected.class_index)
    assert got["cam"].shape == expected.cam.shape == (3, 1, 64, 80)
    np.testing.assert_allclose(got["cam"], expected.cam, rtol=0, atol=1e-6)
    for name in ("logits", "probabilities", "score"):
        np.testing.assert_allclose(got[name], getattr(expected, name), rtol=0, atol=1e-6)
    status, answer = server.request(
        "/v2/models/fish/infer", {**_v2_body(images[:1]), "outputs": [{"name": "score"}, {"name": "class_index"}]}
    )
    assert status == 200 and [o["name"] for o in answer["outputs"]] == ["class_index", "score"]


def test_v2_without_target_class_explains_the_top_class(server, explainer):
    """A class-input artifact asked without target_class explains each image's top prediction (as -1 does)."""
    images = np.random.default_rng(4).standard_normal((2, 3, 64, 64)).astype(np.float32)
    status, answer = server.request("/v2/models/fish/infer", _v2_body(images))
    assert status == 200, answer
    got = _v2_outputs(answer)
    top = got["probabilities"].argmax(axis=1)
    np.testing.assert_array_equal(got["class_index"][:, 0], top)
    expected = explainer(images, np.array([-1, -1]))
    np.testing.assert_allclose(got["cam"], expected.cam, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for i, size in enumerate([(96, 72), (64, 64), (120, 90), (50, 80)]):
        path = folder / f"p{i}.jpg"
        path.write_bytes(_jpeg(i, size))
        paths.append(path)
    return paths


def test_v1_predict_and_explain_equal_explain_files(server, explainer, photos, tmp_path):
    summary = explain_files(explainer, photos, tmp_path, progress=False)
    with open(summary.csv, newline="") as f:
        rows = list(csv.DictReader(f))
    instances = [{"image_bytes": {"b64": _b64(p.read_bytes())}} for p in photos]
    status, answer = server.request("/v1/models/fish:predict", {"instances": instances})
    assert status == 200, answer
    assert len(answer["predictions"]) == len(rows) == 4
    for got, row in zip(answer["predictions"], rows, strict=True):
        assert got["predicted_index"] == int(row["predicted_index"])
        assert got["predicted_label"] == row["predicted_label"] in NAMES
        assert got["probability"] == pytest.approx(float(row["probability"]), abs=1e-6)
        assert [e["index"] for e in got["explained"]] == [int(row["explained_index"])]
        assert [e["label"] for e in got["explained"]] == [row["explained_label"]]
        assert got["explained"][0]["score"] == pytest.approx(float(row["explained_score"]), abs=1e-6)
        assert "cam" not in got["explained"][0] and "png" not in got["explained"][0]

    status, answer = server.request("/v1/models/fish:explain", {"instances": instances, "output": "array"})
    assert status == 200, answer
    expected = explainer(np.stack([preprocess(load_image(p), explainer.metadata) for p in photos]))
    for j, got in enumerate(answer["explanations"]):
        assert got["predicted_index"] == int(rows[j]["predicted_index"])
        np.testing.assert_allclose(np.asarray(got["explained"][0]["cam"]), expected.cam[j, 0], rtol=0, atol=1e-6)

    chosen = [
        {"b64": _b64(photos[0].read_bytes()), "class": "shark"},
        {"b64": _b64(photos[1].read_bytes()), "class": 9},
    ]
    status, answer = server.request("/v1/models/fish:explain", {"instances": chosen})
    assert status == 200, answer
    assert [e["explained"][0]["label"] for e in answer["explanations"]] == ["shark", "ostrich"]
    for record, path in zip(answer["explanations"], photos[:2], strict=True):
        picture = cv2.imdecode(np.frombuffer(base64.b64decode(record["explained"][0]["png"]), np.uint8), 1)
        assert picture.shape == load_image(path).shape  # an overlay on the picture as sent


def test_v1_preprocessed_instances(server, explainer):
    images = np.random.default_rng(5).standard_normal((2, 3, 64, 64)).astype(np.float32)
    body = {"instances": [images[0].tolist(), {"image": images[1].tolist(), "class": 4}], "output": "array"}
    status, answer = server.request("/v1/models/fish:explain", body)
    assert status == 200, answer
    expected = explainer(images, np.asarray([-1, 4]))
    for j, got in enumerate(answer["explanations"]):
        assert got["explained"][0]["index"] == int(expected.class_index[j, 0])
        np.testing.assert_allclose(np.asarray(got["explained"][0]["cam"]), expected.cam[j, 0], rtol=0, atol=1e-6)


def test_64_concurrent_requests(server, explainer):
    pictures = [_jpeg(100 + i) for i in range(8)]
    meta = explainer.metadata
    decoded = [cv2.cvtColor(cv2.imdecode(np.frombuffer(p, np.uint8), 1), cv2.COLOR_BGR2RGB) for p in pictures]
    expected = explainer(np.stack([preprocess(rgb, meta) for rgb in decoded]))

    def call(i: int):
        k = i % len(pictures)
        verb = ":explain" if i % 2 else ":predict"
        status, answer = server.request(f"/v1/models/fish{verb}", {"instances": [{"b64": _b64(pictures[k])}]})
        return i, k, status, answer

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = [f.result(timeout=120) for f in [pool.submit(call, i) for i in range(64)]]
    assert len(results) == 64
    for _, k, status, answer in results:
        assert status == 200, answer
        record = (answer.get("predictions") or answer["explanations"])[0]
        assert record["predicted_index"] == int(expected.probabilities[k].argmax())
        assert record["explained"][0]["score"] == pytest.approx(float(expected.score[k, 0]), abs=1e-6)


_IMAGE = _b64(_jpeg(7))
_BIG = _b64(cv2.imencode(".png", np.zeros((1001, 1000), np.uint8))[1].tobytes())  # 1001x1000 pixels, 3 kB
_V2_OK = {"name": "image", "datatype": "FP32", "shape": [1, 3, 8, 8], "data": [0.5] * 192}
BAD_REQUESTS = [
    # (path, body or raw bytes, message fragment)
    (":predict", b"{not json", "Unrecognized request format"),
    (":predict", 5, "must be a JSON object"),
    (":predict", {"instances": []}, "non-empty list"),
    (":predict", {"images": [_IMAGE]}, "unknown field"),
    (":predict", {"instances": [{"b64": "**not base64**"}]}, "not valid base64"),
    (":predict", {"instances": [{"image_bytes": {"b64": _b64(b"hello, world")}}]}, "not a readable image"),
    (":predict", {"instances": [{"b64": _BIG}]}, f"more than {MAX_PIXELS} pixels"),
    (":predict", {"instances": [{"b64": _IMAGE, "class": "zebra"}]}, "not a class of this artifact"),
    (":predict", {"instances": [{"b64": _IMAGE, "class": 10}]}, "out of range"),
    (":predict", {"instances": [{"b64": _IMAGE}] * (MAX_INSTANCES + 1)}, f"at most {MAX_INSTANCES}"),
    (":predict", {"instances": [[[1.0, 2.0], [3.0, 4.0]]]}, "must be [3][H][W]"),
    (":predict", {"instances": [{"b64": _IMAGE, "colour": 1}]}, "unknown key"),
    (":predict", {"instances": [np.zeros((3, 8, 8)).tolist(), np.zeros((3, 9, 9)).tolist()]}, "one shape"),
    (
        ":explain",
        {"instances": [{"b64": _IMAGE}], "output": "gif"},
        '"output" must be one of png, jpeg, map_png, array',
    ),
    (":predict", b"x" * (1024 * 1024 + 1), "at most 1048576"),
    ("/infer", b"{not json", "malformed request"),
    ("/infer", {"inputs": "x"}, "malformed request"),
    ("/infer", {"inputs": [{**_V2_OK, "datatype": "INT64", "data": [1] * 192}]}, "must be FP32 or FP64"),
    ("/infer", {"inputs": [{**_V2_OK, "data": [0.5] * 191}]}, "does not fit shape"),
    ("/infer", {"inputs": [{**_V2_OK, "shape": [1, 4, 8, 6]}]}, "must have shape [-1, 3, -1, -1]"),
    ("/infer", {"inputs": [_V2_OK, {"name": "mask", "datatype": "FP32", "shape": [1], "data": [1]}]}, "unknown input"),
    (
        "/infer",
        {"inputs": [_V2_OK, {"name": "target_class", "datatype": "INT64", "shape": [2], "data": [1, 2]}]},
        "one per image",
    ),  # fmt: skip
    (
        "/infer",
        {"inputs": [_V2_OK, {"name": "target_class", "datatype": "INT64", "shape": [1], "data": [12]}]},
        'input "target_class"[0] = 12 is out of range; expected 0..9, or -1',
    ),  # fmt: skip
    ("/infer", {"inputs": [_V2_OK], "outputs": [{"name": "heatmap"}]}, "unknown output"),
]


@pytest.mark.parametrize("path, body, message", BAD_REQUESTS, ids=[f"{i:02d}" for i in range(len(BAD_REQUESTS))])
def test_bad_request_is_400_and_server_keeps_serving(server, path, body, message):
    url = f"/v2/models/fish{path}" if path.startswith("/") else f"/v1/models/fish{path}"
    if isinstance(body, bytes):
        status, answer = server.request(url, raw=body)
    else:
        status, answer = server.request(url, body)
    assert status == 400, answer
    assert message in answer["error"]
    status, answer = server.request("/v1/models/fish:predict", {"instances": [{"b64": _IMAGE}]})
    assert status == 200 and len(answer["predictions"]) == 1


def test_grpc_body_over_the_limit_is_refused(server):
    """--max-body-mb bounds gRPC messages too: RESOURCE_EXHAUSTED, and the server keeps serving."""
    grpcclient = pytest.importorskip("tritonclient.grpc")
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    try:
        big = grpcclient.InferInput("image", [1, 3, 300, 300], "FP32")  # 1.08 MB > 1 MiB
        big.set_data_from_numpy(np.zeros((1, 3, 300, 300), np.float32))
        with pytest.raises(InferenceServerException) as caught:
            client.infer("fish", [big])
        assert caught.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        small = grpcclient.InferInput("image", [1, 3, 64, 64], "FP32")
        small.set_data_from_numpy(np.zeros((1, 3, 64, 64), np.float32))
        assert client.infer("fish", [small]).as_numpy("cam").shape == (1, 1, 64, 64)
    finally:
        client.close()


def test_cli_errors_are_one_line(tmp_path, artifact):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cases = [
        (["serve", str(tmp_path / "missing.onnx")], "does not exist"),
        (["serve", str(tmp_path / "model.pt")], "runs .onnx artifacts"),
        (["serve", str(artifact), "--port", "70000"], "expected a port number"),
    ]
    for argv, message in cases:
        done = subprocess.run(
            [sys.executable, "-m", "gradcam_model", *argv], capture_output=True, text=True, env=env, timeout=120
        )
        assert done.returncode == 2, done.stderr
        assert message in done.stderr and "Traceback" not in done.stderr


def test_sigterm_stops_cleanly(server):
    """Last in the module: the server ends here (the fixture's teardown then has nothing to do)."""
    pid = server.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=60) == 0
    assert not any(Path(f"/proc/{c}").exists() for c in children)
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", server.port), timeout=2):
        pass
    log = server.log.read_text()
    assert "Shutting down" in log and "Traceback" not in log


def test_the_served_session_does_not_spin_unless_asked(artifact):
    """The server's ONNX Runtime session lets idle pool threads sleep (spinning ones took the cores its request
    threads and clients need: docs/serving.md, "Speed"); ``--ort-spinning`` keeps ORT's default, as the
    in-process explainer does. In a fresh interpreter: kserve's protobuf clashes with tritonclient's here."""
    code = (
        "import sys\n"
        "from gradcam_model.runtime.explainer import OnnxExplainer\n"
        "from gradcam_model.serving.server import ServeOptions, build_model\n"
        "def setting(session):\n"
        "    try:\n"
        "        return session.get_session_options().get_session_config_entry('session.intra_op.allow_spinning')\n"
        "    except RuntimeError as exc:\n"
        "        return 'unset' if 'does not have' in str(exc) else repr(exc)\n"
        "found = [setting(OnnxExplainer(sys.argv[1], providers=['CPUExecutionProvider']).session)]\n"
        "for spinning in (False, True):\n"
        "    model = build_model(sys.argv[1], ServeOptions(name='m', ort_spinning=spinning))\n"
        "    assert model.load()\n"
        "    found.append(setting(model.explainer.session))\n"
        "print(' '.join(found))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(artifact)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["unset", "0", "unset"]  # in process: spin; served: sleep; --ort-spinning: spin


def test_the_documented_v2_metadata_is_what_the_demo_artifact_gets():
    """docs/serving.md's `GET /v2/models/efficientnet_lite0` sample equals v2_metadata of the demo's metadata."""
    from gradcam_model.contract import ArtifactMetadata
    from gradcam_model.serving.v2 import v2_metadata

    doc = (Path(__file__).resolve().parent.parent / "docs" / "serving.md").read_text()
    [line] = [ln for ln in doc.splitlines() if ln.startswith('{"name":"efficientnet_lite0"') and '"inputs"' in ln]
    documented = json.loads(line)
    assert documented["versions"] == ["1"]
    demo = ArtifactMetadata(  # what gradcam_model.demo exports: class input, 1000 classes, dynamic size
        schema_version=1, method="gradcam", target_layer="bn2", architecture="efficientnet_lite0",
        num_classes=1000, class_names=None, input_size=None, in_channels=3, mean=(0.5,) * 3, std=(0.5,) * 3,
        top_k=1, class_input=True, upsample=True, normalize=True, example_size=(224, 224), format="onnx",
        package_version="0", torch_version="0",
    )  # fmt: skip
    expected = v2_metadata("efficientnet_lite0", demo)
    assert documented["inputs"] == expected["inputs"] and documented["outputs"] == expected["outputs"]
    assert [i["name"] for i in documented["inputs"]] == ["image", "image_bytes", "target_class"]
