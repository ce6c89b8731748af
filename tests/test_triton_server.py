"""``gradcam triton --backend python`` under a real tritonserver (2.51, nvidia-pytriton), called by tritonclient.

One server per module on 127.0.0.1 with free ports and no metrics, six models: a fixed-size
artifact, a dynamic-size one with a class input, that one with a crop preprocessing recorded,
the fixed one with a small pixel limit, and with a long batching delay, and a guided Grad-CAM
artifact (its sixth output, ``guided``). tritonclient runs in a subprocess
(tests/triton_client_run.py: its gRPC messages clash with kserve's) over HTTP and gRPC.
The oracle is the in-process explainer on the same inputs (pictures decoded and
preprocessed here, in this venv's numpy 2 and OpenCV, the server's run numpy 1 and OpenCV 4.11).
"""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import onnx
import psutil
import pytest
import triton_server

from gradcam_model.cli import main
from gradcam_model.contract import GUIDED_OUTPUT, METADATA_KEY, ArtifactMetadata, Preprocessing
from gradcam_model.runtime import decode_image, explained_region, load_explainer, overlay, preprocess
from gradcam_model.serving.triton import TritonOptions, write_repository

pytestmark = [
    pytest.mark.skipif(triton_server.pytriton_dir() is None, reason="needs nvidia-pytriton (scripts/setup.sh)"),
    pytest.mark.xdist_group("triton_server"),
]
HERE = Path(__file__).resolve().parent
OUTPUTS = ["logits", "probabilities", "class_index", "score", "cam"]
MAP_ATOL = 1e-6  # maps: the same ORT build on the same inputs
SCORE_ATOL = 1e-5  # logits, probabilities, scores: a few float32 ulps of values around 1
# OpenCV 4.11 (the server's numpy-1 environment) and 5.1 (ours) enlarge a 37x53 picture to 64x64 up
# to 3e-7 apart, which moves a map by 1.01e-6: pictures are compared on inputs preprocessed in the
# server's environment, and the two preprocessings within this
PREPROCESS_ATOL = 1e-6
OVERLAY_LEVELS = 0  # of 255: the server (OpenCV 4.11) and we (5.1) draw the same map identically
_PREPROCESS = r"""
import pickle, sys
import numpy as np
from gradcam_model.runtime import decode_image, load_explainer, preprocess
meta = load_explainer(sys.argv[1], providers=["CPUExecutionProvider"]).metadata
pngs = pickle.loads(open(sys.argv[2], "rb").read())
inputs = [preprocess(decode_image(p), meta) for p in pngs]
open(sys.argv[2], "wb").write(pickle.dumps([np.__version__, inputs]))
"""


def _with_preprocessing(source: Path, target: Path, prep: Preprocessing) -> Path:
    """A copy of an ONNX artifact whose metadata records another preprocessing (the graph is the same)."""
    model = onnx.load(str(source))
    props = {p.key: p.value for p in model.metadata_props}
    record = json.loads(props[METADATA_KEY])
    record["preprocessing"] = asdict(prep)
    meta = ArtifactMetadata.from_json(json.dumps(record), str(target))
    del model.metadata_props[:]
    for key, value in meta.to_props().items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(target))
    return target


@pytest.fixture(scope="module")
def served(tmp_path_factory, artifacts, resnet18):
    """The artifacts, their explainers, and one running tritonserver serving them all."""
    import torch

    from gradcam_model import GradCAMModel, export_onnx

    folder = tmp_path_factory.mktemp("triton-server")
    example = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    guided = GradCAMModel(resnet18, "layer4", method="guided-gradcam", example_input=example, top_k=2)
    guided = export_onnx(guided, folder / "guided.onnx")
    static, pets = artifacts["static.onnx"], artifacts["dynamic.onnx"]  # fixed 64x64; dynamic, a class input
    crop = _with_preprocessing(
        pets, folder / "crop.onnx", Preprocessing(resize="shorter", crop_pct=0.875, interpolation="bicubic")
    )
    env = triton_server.stub_environment(folder / "stub-env")
    repo = folder / "repo"
    argv = ["triton", str(static), "--out", str(repo), "--backend", "python", "--execution-env", str(env)]
    assert main(argv) == 0
    others = {
        "pets": (pets, {}),
        "crop": (crop, {}),
        "limited": (static, {"max_pixels": 5000}),
        "patient": (static, {"max_queue_delay_us": 200_000}),  # waits for a full batch: batching for sure
        "guided": (guided, {}),
    }
    for name, (artifact, extra) in others.items():
        options = TritonOptions(backend="python", execution_env=str(env), **extra)
        write_repository(artifact, repo, name, options=options)
    models = ["static", *others]
    work = folder / "work"
    work.mkdir()
    server = triton_server.start(repo, work, models)
    explainers = {"static": static, "pets": pets, "crop": crop, "limited": static, "patient": static, "guided": guided}
    yield {
        "server": server,
        "env": env,
        "artifacts": explainers,
        "repo": repo,
        "work": folder,
        "explainers": {
            name: load_explainer(path, providers=["CPUExecutionProvider"]) for name, path in explainers.items()
        },
    }
    triton_server.stop(server)


def _call(served, protocol: str, model: str, requests: list[dict], threads: int = 1) -> list[dict]:
    server = served["server"]
    job = {"protocol": protocol, "url": server.http if protocol == "http" else server.grpc, "model": model}
    job.update(requests=requests, threads=threads)
    path = served["work"] / f"job-{protocol}.pkl"
    path.write_bytes(pickle.dumps(job))
    done = subprocess.run(
        [sys.executable, str(HERE / "triton_client_run.py"), str(path), str(path) + ".out"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return pickle.loads(Path(str(path) + ".out").read_bytes())["results"]


def _preprocessed_by_the_server_env(served, model: str, pngs: list[bytes]) -> np.ndarray:
    """The pictures preprocessed by gradcam_model in the server's Python environment (numpy 1)."""
    path = served["work"] / "pictures.pkl"
    path.write_bytes(pickle.dumps(pngs))
    python = served["env"] / "bin" / "python"
    argv = [str(python), "-c", _PREPROCESS, str(served["artifacts"][model]), str(path)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    numpy_version, inputs = pickle.loads(path.read_bytes())
    assert numpy_version.startswith("1.")
    return np.stack(inputs)


def _png(height: int, width: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    picture = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (5, 5), 2)
    return cv2.imencode(".png", picture)[1].tobytes()


def _pictures(*pngs: bytes) -> tuple:
    return ("image_bytes", "BYTES", np.array([[p] for p in pngs], dtype=np.object_))


def _assert_outputs(got: dict, expected, names=OUTPUTS) -> None:
    assert "error" not in got, got.get("error")
    for name, want in zip(OUTPUTS, expected.outputs()[: len(OUTPUTS)], strict=True):  # guided: tested apart
        if name not in names:
            continue
        have = got["outputs"][name]
        assert have.shape == want.shape and have.dtype == want.dtype, name
        if name == "class_index":
            np.testing.assert_array_equal(have, want)
        else:
            atol = MAP_ATOL if name == "cam" else SCORE_ATOL
            np.testing.assert_allclose(have, want, rtol=0, atol=atol, err_msg=name)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_tensors_match_the_explainer(served, protocol):
    rng = np.random.default_rng(1)
    static, pets = served["explainers"]["static"], served["explainers"]["pets"]
    cases = {
        "static": [rng.standard_normal((n, 3, 64, 64)).astype(np.float32) for n in (1, 3)],
        "pets": [rng.standard_normal((n, 3, h, w)).astype(np.float32) for n, h, w in ((1, 64, 64), (3, 48, 80))],
    }
    got = _call(served, protocol, "static", [{"inputs": [("image", "FP32", x)]} for x in cases["static"]])
    for result, x in zip(got, cases["static"], strict=True):
        _assert_outputs(result, static(x))
        assert set(result["outputs"]) == {*OUTPUTS, "overlay_png", "region"}  # a request naming none gets all
    classes = [np.array([[7]]), np.array([[3], [-1], [9]])]
    requests = [
        {"inputs": [("image", "FP32", x), ("target_class", "INT64", c)]} for x, c in zip(cases["pets"], classes)
    ]
    requests.append({"inputs": [("image", "FP32", cases["pets"][1])], "outputs": OUTPUTS})  # no class: the top one
    got = _call(served, protocol, "pets", requests)
    _assert_outputs(got[0], pets(cases["pets"][0], np.array([7])))
    _assert_outputs(got[1], pets(cases["pets"][1], np.array([3, -1, 9])))
    assert got[1]["outputs"]["class_index"][:, 0].tolist()[::2] == [3, 9]
    _assert_outputs(got[2], pets(cases["pets"][1]))
    assert set(got[2]["outputs"]) == set(OUTPUTS)  # named outputs: no overlays computed or sent


def test_the_guided_output_matches_the_explainer(served):
    """A guided Grad-CAM artifact (top 2): its ``guided`` output ``[N, 2, 3, 64, 64]`` over HTTP, from tensors
    and from a picture, equals the in-process explainer's."""
    explainer = served["explainers"]["guided"]
    x = np.random.default_rng(4).standard_normal((3, 3, 64, 64)).astype(np.float32)
    png = _png(48, 90, seed=7)
    requests = [
        {"inputs": [("image", "FP32", x)], "outputs": [*OUTPUTS, GUIDED_OUTPUT]},
        {"inputs": [("image", "FP32", x[:1])]},  # naming none: every output, the guided one too
        {"inputs": [_pictures(png)], "outputs": [GUIDED_OUTPUT, "cam"]},
    ]
    got = _call(served, "http", "guided", requests)
    inputs = _preprocessed_by_the_server_env(served, "guided", [png])
    for result, want in zip(got, (explainer(x), explainer(x[:1]), explainer(inputs)), strict=True):
        assert "error" not in result, result["error"]
        _assert_outputs(result, want, names=set(result["outputs"]) & set(OUTPUTS))
        guided = result["outputs"][GUIDED_OUTPUT]
        assert guided.shape == want.guided.shape == (len(want.cam), 2, 3, 64, 64) and guided.dtype == np.float32
        assert float(np.abs(want.guided).max()) > 1e-3  # a gradient image, not zeros
        np.testing.assert_allclose(guided, want.guided, rtol=0, atol=MAP_ATOL)
    assert set(got[1]["outputs"]) == {*OUTPUTS, GUIDED_OUTPUT, "overlay_png", "region"}
    assert set(got[2]["outputs"]) == {GUIDED_OUTPUT, "cam"}


SIZES = [(80, 100), (37, 53), (123, 61), (9, 300)]  # odd sizes and aspect ratios


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("model", ["static", "pets", "crop"])
def test_pictures_match_the_explainer(served, protocol, model):
    explainer = served["explainers"][model]
    meta = explainer.metadata
    pngs = [_png(h, w, seed=i) for i, (h, w) in enumerate(SIZES)]
    requests = [{"inputs": [_pictures(p)], "outputs": [*OUTPUTS, "overlay_png", "region"]} for p in pngs]
    requests.append({"inputs": [_pictures(*pngs)], "outputs": OUTPUTS})  # one request, four pictures
    got = _call(served, protocol, model, requests)
    pictures = [decode_image(p) for p in pngs]
    inputs = _preprocessed_by_the_server_env(served, model, pngs)
    np.testing.assert_allclose(inputs, np.stack([preprocess(p, meta) for p in pictures]), rtol=0, atol=PREPROCESS_ATOL)
    for i, picture in enumerate(pictures):
        result = got[i]
        _assert_outputs(result, explainer(inputs[i : i + 1]))
        region = explained_region(picture.shape, meta)
        np.testing.assert_allclose(result["outputs"]["region"][0], region, rtol=1e-6)
        png = cv2.imdecode(np.frombuffer(result["outputs"]["overlay_png"][0, 0], np.uint8), cv2.IMREAD_COLOR)
        want = overlay(picture, result["outputs"]["cam"][0, 0], region=region)  # the server's map, drawn here
        assert png.shape == want.shape  # the map over the whole picture
        assert np.abs(png[..., ::-1].astype(int) - want).max() <= OVERLAY_LEVELS
    _assert_outputs(got[-1], explainer(inputs))
    if model == "crop":  # the crop shows less than the picture: the region says which part
        assert all(got[i]["outputs"]["region"][0, 2] < SIZES[i][1] for i in range(len(SIZES)))


def _stats(served, model: str) -> dict:
    url = f"http://{served['server'].http}/v2/models/{model}/stats"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())["model_stats"][0]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_concurrent_clients_are_answered_right(served, protocol):
    static = served["explainers"]["static"]
    rng = np.random.default_rng(3)
    tensors = [rng.standard_normal((1 + i % 2, 3, 64, 64)).astype(np.float32) for i in range(16)]
    pngs = [_png(40 + i, 70 - i, seed=10 + i) for i in range(16)]
    requests = []
    for x, p in zip(tensors, pngs, strict=True):
        requests += [
            {"inputs": [("image", "FP32", x)], "outputs": OUTPUTS},
            {"inputs": [_pictures(p)], "outputs": OUTPUTS},
        ]
    before = _stats(served, "patient")
    got = _call(served, protocol, "patient", requests, threads=8)
    after = _stats(served, "patient")
    inputs = _preprocessed_by_the_server_env(served, "static", pngs)
    for i, x in enumerate(tensors):
        _assert_outputs(got[2 * i], static(x))
        _assert_outputs(got[2 * i + 1], static(inputs[i : i + 1]))
    requests_run = int(after["inference_count"]) - int(before["inference_count"])
    executions = int(after["execution_count"]) - int(before["execution_count"])
    assert requests_run == sum(x.shape[0] for x in tensors) + len(pngs)
    # Whether Triton's dynamic batcher merges them is its scheduler's timing, not ours: this model waits
    # up to 0.2 s for more, and runs have seen 17 executions for the 32 requests, and 32 (gRPC, on a
    # quiet machine). Our part, several requests in one execute() answered each on its own, is tested
    # in test_triton.py; here every execution answered at least one request.
    assert 1 <= executions <= len(requests), (executions, len(requests))


_TINY = _png(8, 8, seed=0)
BAD = [  # (model, inputs, message)
    ("static", [_pictures(b"not a picture")], r'^input "image_bytes"\[0\]: not a readable image'),
    ("static", [_pictures(_TINY, b"")], r'^input "image_bytes"\[1\]: empty file, not an image$'),
    (
        "limited",
        [_pictures(_png(100, 100, seed=1))],
        r'^input "image_bytes"\[0\]: the picture has more than 5000 pixels$',
    ),
    (
        "static",
        [("image", "FP64", np.zeros((1, 3, 64, 64)))],
        r"data-type is 'FP64', but model 'static' expects 'FP32'",
    ),
    ("static", [("image", "FP32", np.zeros((1, 3, 32, 32), np.float32))], r"unexpected shape for input 'image'"),
    ("static", [("image", "FP32", np.full((1, 3, 64, 64), np.nan, np.float32))], r'^input "image" holds NaN or Inf$'),
    ("static", [("image", "FP32", np.zeros((1, 3, 64, 64), np.float32)), _pictures(_TINY)], r"^give exactly one of"),
    ("pets", [("target_class", "INT64", np.array([[1]]))], r'^give exactly one of the inputs "image" .* got neither$'),
    (
        "pets",
        [_pictures(_TINY), ("target_class", "INT64", np.array([[10]]))],
        r'^input "target_class"\[0\] = 10 is out',
    ),
    (
        "pets",
        [_pictures(_TINY, _TINY), ("target_class", "INT64", np.array([[1]]))],
        "batch size does not match other inputs",
    ),
]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bad_requests_get_one_line_errors_and_the_server_keeps_serving(served, protocol):
    by_model: dict[str, list] = {}
    for model, inputs, message in BAD:
        by_model.setdefault(model, []).append((inputs, message))
    good = {"inputs": [_pictures(_TINY)], "outputs": ["class_index"]}
    for model, cases in by_model.items():
        got = _call(served, protocol, model, [*({"inputs": inputs} for inputs, _ in cases), good])
        for result, (_, message) in zip(got, cases):
            assert "error" in result, message
            assert "\n" not in result["error"]
            assert result["status"] in ("400", "StatusCode.INVALID_ARGUMENT"), result
            assert re.search(message, result["error"]), result["error"]
        assert "outputs" in got[-1], got[-1]  # the same model answers the next request
    assert served["server"].process.poll() is None


def test_shutdown_leaves_no_process_and_no_shared_memory(served):
    server = served["server"]
    children = psutil.Process(server.process.pid).children(recursive=True)
    assert len(children) >= 5  # one python-backend stub per model instance
    assert triton_server.stop(server) == 0, server.log_text()[-3000:]
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive
    # the stubs' regions are unlinked after the processes are gone: seen seconds later on a loaded machine
    deadline = time.monotonic() + 30
    while (left := triton_server.shm_regions() - server.shm_before) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left
    assert "gradcam: " in server.log_text() and "runs on CPUExecutionProvider" in server.log_text()
