"""Triton's ModelConfig, RepositoryIndex and ModelStatistics gRPC messages, in protobuf's wire format by hand.

kserve's gRPC service lacks these three RPCs, and Triton's message classes
(``tritonclient.grpc``) cannot be loaded beside kserve's: both register the same
``inference.*`` names. The wire format needs no classes: each message here is the few
fields of Triton's ``grpc_service.proto`` / ``model_config.proto`` we fill, with their
field numbers; ``tests/test_serve_clients.py`` reads them back with tritonclient.
"""

from __future__ import annotations

__all__ = ["model_config", "repository_index", "request_fields", "statistics"]

_TYPES = {"TYPE_UINT8": 2, "TYPE_INT32": 8, "TYPE_INT64": 9, "TYPE_FP32": 11, "TYPE_FP64": 12, "TYPE_STRING": 13}


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64: ten bytes, two's complement
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _int(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value) if value else b""


def _bytes(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _text(number: int, text: str) -> bytes:
    return _bytes(number, text.encode()) if text else b""


def _packed(number: int, values: list[int]) -> bytes:
    return _bytes(number, b"".join(_varint(v) for v in values)) if values else b""


def request_fields(data: bytes) -> dict[int, str]:
    """The string fields (numbers 1, 2: name, version) of a ModelConfig/ModelStatistics/RepositoryIndex request."""
    fields, offset = {}, 0

    def varint() -> int:
        nonlocal offset
        value, shift = 0, 0
        while True:
            byte = data[offset]
            offset += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while offset < len(data):
        key = varint()
        if key & 7 == 2:
            length = varint()
            fields[key >> 3] = data[offset : offset + length].decode(errors="replace")
            offset += length
        elif key & 7 == 0:
            varint()
        else:  # no other wire types in these requests
            break
    return fields


def _tensor(record: dict, output: bool) -> bytes:
    body = _text(1, record["name"]) + _int(2, _TYPES[record["data_type"]])
    body += _packed(3 if output else 4, record["dims"])
    if "reshape" in record:
        body += _bytes(5, _packed(1, record["reshape"]["shape"]))
    if record.get("optional"):
        body += _int(8, 1)
    return body


def model_config(config: dict) -> bytes:
    """ModelConfigResponse for :func:`~gradcam_model.serving.v2.v2_config`'s JSON."""
    body = _text(1, config["name"]) + _text(2, config["platform"]) + _text(17, config["backend"])
    body += _bytes(3, _bytes(3, _packed(1, config["version_policy"]["specific"]["versions"])))
    body += _int(4, config["max_batch_size"])
    body += b"".join(_bytes(5, _tensor(t, False)) for t in config["input"])
    body += b"".join(_bytes(6, _tensor(t, True)) for t in config["output"])
    for key, value in config["parameters"].items():
        body += _bytes(14, _text(1, key) + _bytes(2, _text(1, value["string_value"])))
    return _bytes(1, body)


def repository_index(models: list[dict]) -> bytes:
    """RepositoryIndexResponse for ``[{"name", "version", "state"}]``."""
    return b"".join(_bytes(1, _text(1, m["name"]) + _text(2, m["version"]) + _text(3, m["state"])) for m in models)


def _duration(record: dict) -> bytes:
    return _int(1, record["count"]) + _int(2, record["ns"])


def statistics(records: list[dict]) -> bytes:
    """ModelStatisticsResponse for :meth:`~gradcam_model.serving.server.Statistics.as_json` records."""
    out = b""
    for r in records:
        stats = r["inference_stats"]
        infer = _bytes(1, _duration(stats["success"])) + _bytes(2, _duration(stats["fail"]))
        body = _text(1, r["name"]) + _text(2, r["version"]) + _int(3, r["last_inference"])
        body += _int(4, r["inference_count"]) + _int(5, r["execution_count"]) + _bytes(6, infer)
        out += _bytes(1, body)
    return out
