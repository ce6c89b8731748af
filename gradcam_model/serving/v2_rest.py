"""v2 inference bodies over HTTP, JSON or with the binary data extension, read and written without kserve.

kserve 0.21 turns every binary input back into a JSON list element by element (slow for
image tensors) and fails on BYTES that are not UTF-8 (encoded pictures), so the server
reads and writes the bodies here. The format is Triton's: a JSON header, then the raw
bytes of each tensor marked ``"parameters": {"binary_data_size": n}``, in order; the
header's length is the ``Inference-Header-Content-Length`` HTTP header. BYTES elements
are each a 4-byte little-endian length and the bytes. A body without that header is
JSON whatever its content type says.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np
import orjson

from ..errors import InputError

__all__ = ["V2Request", "encode_response", "parse_request"]

_NUMPY = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BYTES": object,
}  # fmt: skip


@dataclass
class V2Request:
    """One parsed request: its id, input arrays by name, the outputs asked for (name -> binary or None)."""

    id: str | None
    tensors: dict = field(default_factory=dict)  # name -> (datatype, array)
    outputs: dict = field(default_factory=dict)  # name -> True/False (binary_data) or None (the default)
    binary_default: bool = False  # "binary_data_output" of the request


def _bytes_elements(raw: bytes, where: str) -> np.ndarray:
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InputError(f"{where}: BYTES data ends inside an element's 4-byte length")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InputError(f"{where}: a BYTES element of {length} bytes runs past the end of its data")
        items.append(raw[offset : offset + length])
        offset += length
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def _tensor(spec: dict, raw: bytes | None, where: str) -> tuple[str, np.ndarray]:
    datatype, shape = spec.get("datatype"), spec.get("shape")
    if datatype not in _NUMPY:
        raise InputError(f"{where}: unknown datatype {datatype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):  # fmt: skip
        raise InputError(f"{where}: shape must be a list of non-negative integers, got {shape!r}")
    try:
        if raw is not None:
            flat = _bytes_elements(raw, where) if datatype == "BYTES" else np.frombuffer(raw, _NUMPY[datatype])
        elif datatype == "BYTES":
            data = np.asarray(spec.get("data"), dtype=object).reshape(-1)
            flat = np.empty(data.size, dtype=object)
            flat[:] = [d.encode() if isinstance(d, str) else d for d in data]
        else:
            flat = np.asarray(spec.get("data"), dtype=_NUMPY[datatype]).reshape(-1)
        return datatype, flat.reshape(shape)
    except (ValueError, TypeError) as exc:
        raise InputError(
            f"{where}: its data does not fit shape {shape} and datatype {datatype} ({str(exc).splitlines()[0]})"
        ) from None


def parse_request(body: bytes, header_length: str | None) -> V2Request:
    """A v2 request body (``header_length``: the Inference-Header-Content-Length header, or None)."""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise InputError(f"Inference-Header-Content-Length {header_length!r} does not fit a {len(body)}-byte body")
        split = int(header_length)
        header, rest = body[:split], memoryview(body)[split:]
    else:
        header, rest = body, memoryview(b"")
    try:
        record = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"malformed request: the body is not JSON ({exc})") from None
    if not isinstance(record, dict) or not isinstance(record.get("inputs"), list):
        raise InputError('malformed request: expected {"inputs": [{"name", "datatype", "shape", "data"}, ...]}')
    parameters = record.get("parameters") or {}
    request = V2Request(record.get("id"), binary_default=bool(parameters.get("binary_data_output", False)))
    offset = 0
    for i, spec in enumerate(record["inputs"]):
        name = spec.get("name") if isinstance(spec, dict) else None
        if not isinstance(name, str):
            raise InputError(f"malformed request: inputs[{i}] needs a name, a datatype, a shape and data")
        where = f'input "{name}"'
        if name in request.tensors:
            raise InputError(f"{where} is given twice")
        size = (spec.get("parameters") or {}).get("binary_data_size")
        raw = None
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(rest):
                raise InputError(f"{where}: binary_data_size {size!r} runs past the end of the body")
            raw = bytes(rest[offset : offset + size])
            offset += size
        elif "data" not in spec:
            raise InputError(f"{where} has neither data nor binary_data_size")
        request.tensors[name] = _tensor(spec, raw, where)
    if offset != len(rest):
        raise InputError(f"the body holds {len(rest) - offset} bytes of binary data beyond its inputs")
    for i, spec in enumerate(record.get("outputs") or []):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise InputError(f'malformed request: outputs[{i}] must be {{"name": ...}}')
        flag = (spec.get("parameters") or {}).get("binary_data")
        request.outputs[spec["name"]] = None if flag is None else bool(flag)
    return request


def _bytes_payload(array: np.ndarray) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in array.reshape(-1))


def encode_response(request: V2Request, model_name: str, version: str, outputs) -> tuple[bytes, int | None]:
    """The answer for ``(name, datatype, array)`` outputs: ``(body, JSON header length or None)``."""
    records, parts = [], []
    for name, datatype, array in outputs:
        flag = request.outputs.get(name)
        binary = request.binary_default if flag is None else flag
        record = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            part = _bytes_payload(array) if datatype == "BYTES" else np.ascontiguousarray(array).tobytes()
            record["parameters"] = {"binary_data_size": len(part)}
            parts.append(part)
        else:
            record["data"] = array.reshape(-1).tolist()
        records.append(record)
    header = orjson.dumps({"id": request.id or "", "model_name": model_name, "model_version": version,
                           "outputs": records})  # fmt: skip
    if not parts:
        return header, None
    return b"".join([header, *parts]), len(header)
