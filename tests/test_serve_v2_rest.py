"""v2 bodies read and written by the server (``serving.v2_rest``), against tritonclient's own encoder and decoder.

No server here: tritonclient's ``generate_request_body`` builds the requests (JSON and
the binary data extension) and ``parse_response_body`` reads the answers.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from gradcam_model.errors import InputError
from gradcam_model.serving.v2_rest import encode_response, parse_request

httpclient = pytest.importorskip("tritonclient.http")


def _inputs(binary: bool):
    rng = np.random.default_rng(0)
    arrays = {
        "image": ("FP32", rng.standard_normal((2, 3, 4, 5)).astype(np.float32)),
        "target_class": ("INT64", np.array([-1, 7], np.int64)),
        "image_bytes": ("BYTES", np.array([b"\xff\xd8\xff\x00 not utf-8", b""], dtype=object)),
        "mask": ("UINT8", rng.integers(0, 256, (2, 6), dtype=np.uint8)),
    }
    tensors = []
    for name, (datatype, array) in arrays.items():
        tensor = httpclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=binary or datatype == "BYTES")
        tensors.append(tensor)
    return arrays, tensors


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_requests_tritonclient_builds_are_read_exactly(binary):
    arrays, tensors = _inputs(binary)
    outputs = [
        httpclient.InferRequestedOutput("cam", binary_data=True),
        httpclient.InferRequestedOutput("score", binary_data=False),
    ]
    body, header_length = httpclient.InferenceServerClient.generate_request_body(
        tensors, outputs=outputs, request_id="r-1"
    )
    request = parse_request(body, None if header_length is None else str(header_length))
    assert request.id == "r-1"
    assert request.outputs == {"cam": True, "score": False}  # tritonclient states binary_data per output
    assert list(request.tensors) == list(arrays)
    for name, (datatype, array) in arrays.items():
        got_type, got = request.tensors[name]
        assert got_type == datatype and got.shape == array.shape
        if datatype == "BYTES":
            assert list(got) == list(array)
        else:
            assert got.dtype == array.dtype
            np.testing.assert_array_equal(got, array)


def test_answers_tritonclient_reads_exactly():
    rng = np.random.default_rng(1)
    cam = rng.random((2, 1, 4, 5)).astype(np.float32)
    pngs = np.array([[b"\x89PNG one"], [b"\x89PNG two \x00\xff"]], dtype=object)
    region = np.array([[0.5, 1, 2, 3], [4, 5, 6, 7.25]], np.float32)
    outputs = [("cam", "FP32", cam), ("cam_png", "BYTES", pngs), ("region", "FP32", region),
               ("class_index", "INT64", np.array([[3], [9]], np.int64))]  # fmt: skip
    request = parse_request(json.dumps({"id": "a", "inputs": [], "outputs": [
        {"name": "cam"}, {"name": "cam_png", "parameters": {"binary_data": True}},
        {"name": "region", "parameters": {"binary_data": False}}, {"name": "class_index"}],
        "parameters": {"binary_data_output": True}}).encode(), None)  # fmt: skip
    body, header_length = encode_response(request, "m", "1", outputs)
    result = httpclient.InferenceServerClient.parse_response_body(body, header_length=header_length)
    assert result.get_response()["id"] == "a" and result.get_response()["model_version"] == "1"
    np.testing.assert_array_equal(result.as_numpy("cam"), cam)
    assert result.as_numpy("cam_png").tolist() == pngs.tolist()
    np.testing.assert_array_equal(result.as_numpy("region"), region)
    assert "data" in result.get_output("region")  # binary_data false: JSON for this one
    np.testing.assert_array_equal(result.as_numpy("class_index"), [[3], [9]])
    plain, length = encode_response(parse_request(b'{"inputs": []}', None), "m", "1", outputs[2:3])
    assert length is None and json.loads(plain)["outputs"][0]["data"] == region.ravel().tolist()


_HEADER = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}}]}
_RAW = json.dumps(_HEADER).encode()
BAD = [
    # (body, header length, message)
    (b"{nope", None, "malformed request: the body is not JSON"),
    (b'{"inputs": {}}', None, "malformed request: expected"),
    (b'{"inputs": [{"datatype": "FP32"}]}', None, "inputs[0] needs a name"),
    (_RAW + b"\x00" * 8, "x", "Inference-Header-Content-Length 'x' does not fit"),
    (_RAW + b"\x00" * 8, str(len(_RAW) + 100), "does not fit a"),
    (_RAW + b"\x00" * 4, str(len(_RAW)), "binary_data_size 8 runs past the end"),
    (_RAW + b"\x00" * 12, str(len(_RAW)), "4 bytes of binary data beyond its inputs"),
    (b'{"inputs": [{"name": "image", "datatype": "FP32", "shape": [2], "data": [1]}]}', None, "does not fit shape"),
    (b'{"inputs": [{"name": "image", "datatype": "FP8", "shape": [1], "data": [1]}]}', None, "unknown datatype"),
    (b'{"inputs": [{"name": "image", "datatype": "FP32", "shape": [-1], "data": [1]}]}', None, "non-negative"),
    (b'{"inputs": [{"name": "image", "datatype": "FP32", "shape": [1]}]}', None, "neither data nor"),
    (
        b'{"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": [1]}, '
        b'{"name": "a", "datatype": "FP32", "shape": [1], "data": [1]}]}',
        None,
        'input "a" is given twice',
    ),  # fmt: skip
    (
        json.dumps(
            {"inputs": [{"name": "b", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 6}}]}
        ).encode()
        + struct.pack("<I", 9)
        + b"ab",
        str(
            len(
                json.dumps(
                    {
                        "inputs": [
                            {"name": "b", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 6}}
                        ]
                    }
                )
            )
        ),
        "a BYTES element of 9 bytes runs past the end",
    ),  # fmt: skip
    (b'{"inputs": [], "outputs": [{"nom": "cam"}]}', None, 'outputs[0] must be {"name": ...}'),
]


@pytest.mark.parametrize("body, length, message", BAD, ids=[f"{i:02d}" for i in range(len(BAD))])
def test_bad_bodies_are_one_line_input_errors(body, length, message):
    with pytest.raises(InputError) as caught:
        parse_request(body, length)
    assert message in str(caught.value) and "\n" not in str(caught.value)
