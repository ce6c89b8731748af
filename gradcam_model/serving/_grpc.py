"""The v2 gRPC endpoint on our host: kserve 0.21's servicer with versions checked and user errors as one line.

kserve binds gRPC on ``[::]`` (every interface) and logs every user error with a
traceback; here the server listens on the HTTP host only, a request for another version
than ``"1"`` is NOT_FOUND naming the versions there are, and user errors are
INVALID_ARGUMENT with our message, logged as one line. Triton's ModelConfig,
RepositoryIndex and ModelStatistics RPCs, which kserve's service lacks, are added on the
same service name with hand-encoded messages (:mod:`._wire`).
"""

from __future__ import annotations

import logging
from concurrent import futures

import grpc
from grpc import StatusCode, aio
from kserve.errors import InvalidInput, ModelNotFound
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer

from . import _wire
from .v2 import VERSION, v2_config

__all__ = ["ExplainGRPCServer"]

log = logging.getLogger(__name__)


class _NoSuchVersion(ModelNotFound):
    def __init__(self, name: str, version: str) -> None:
        self.reason = f'model "{name}" has no version "{version}"; its versions: ["{VERSION}"]'


def _check_version(name: str, version: str) -> None:
    if version not in ("", VERSION):
        raise _NoSuchVersion(name, version)


class _Servicer(InferenceServicer):
    """kserve's servicer; every model RPC checks the version; metadata lists it."""

    async def ModelReady(self, request, context):
        _check_version(request.name, request.version)
        return await super().ModelReady(request, context)

    async def ModelMetadata(self, request, context):
        _check_version(request.name, request.version)
        answer = await super().ModelMetadata(request, context)
        answer.versions.append(VERSION)
        return answer

    async def ModelInfer(self, request, context):
        _check_version(request.model_name, request.model_version)
        return await super().ModelInfer(request, context)


def _triton_rpcs(dataplane):
    """ModelConfig, RepositoryIndex and ModelStatistics for ``inference.GRPCInferenceService`` (bytes in, out)."""

    def model(fields: dict[int, str]):
        name = fields.get(1, "")
        _check_version(name, fields.get(2, ""))
        return name, dataplane.get_model_from_registry(name)  # ModelNotFound: NOT_FOUND

    async def config(request: bytes, context) -> bytes:
        name, found = model(_wire.request_fields(request))
        return _wire.model_config(v2_config(name, found.explainer.metadata, found.options.limits.max_instances))

    async def index(request: bytes, context) -> bytes:
        names = list(dataplane.model_registry.get_models())
        ready = {n: dataplane.get_model_from_registry(n).ready for n in names}
        return _wire.repository_index(
            [{"name": n, "version": VERSION, "state": "READY" if ready[n] else "UNAVAILABLE"} for n in names]
        )

    async def statistics(request: bytes, context) -> bytes:
        fields = _wire.request_fields(request)
        names = [fields[1]] if fields.get(1) else list(dataplane.model_registry.get_models())
        records = []
        for name in names:
            _, found = model({1: name, 2: fields.get(2, "")})
            records.append(found.stats.as_json(name, found.batcher.executions))
        return _wire.statistics(records)

    handlers = {
        "ModelConfig": grpc.unary_unary_rpc_method_handler(config),
        "RepositoryIndex": grpc.unary_unary_rpc_method_handler(index),
        "ModelStatistics": grpc.unary_unary_rpc_method_handler(statistics),
    }
    return grpc.method_handlers_generic_handler("inference.GRPCInferenceService", handlers)


class _Errors(ExceptionToStatusInterceptor):
    """User errors and unknown models or versions as one log line, not kserve's traceback."""

    async def handle_exception(self, ex, request_or_iterator, context, method_name):
        if isinstance(ex, InvalidInput):
            log.info("bad gRPC request: %s", ex.reason)
            await context.abort(StatusCode.INVALID_ARGUMENT, ex.reason)
        elif isinstance(ex, ModelNotFound):
            log.info("not found: %s", ex.reason)
            await context.abort(StatusCode.NOT_FOUND, ex.reason)
        else:
            await super().handle_exception(ex, request_or_iterator, context, method_name)


class ExplainGRPCServer(GRPCServer):
    """kserve's gRPC server, listening on ``host`` only."""

    def __init__(self, host: str, port: int, *args, **kwargs) -> None:
        super().__init__(port, *args, **kwargs)
        self._host = host

    async def start(self, max_workers):
        self._server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=(_Errors(),),
            options=[
                ("grpc.max_send_message_length", self._kwargs["grpc_max_send_message_length"]),
                ("grpc.max_receive_message_length", self._kwargs["grpc_max_receive_message_length"]),
                ("grpc.so_reuseport", 0),  # a second server on the same port fails instead of sharing it
            ],
        )
        servicer = _Servicer(self._data_plane, self._model_repository_extension)
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, self._server)
        self._server.add_generic_rpc_handlers((_triton_rpcs(self._data_plane),))
        address = f"[{self._host}]:{self._port}" if ":" in self._host else f"{self._host}:{self._port}"
        self._server.add_insecure_port(address)
        await self._server.start()
        await self._server.wait_for_termination()
