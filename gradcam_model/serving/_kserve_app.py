"""KServe's model server adjusted for us: our host for HTTP and gRPC, a body size limit, user errors as 400.

Imported only after :func:`gradcam_model.serving.server._kserve` has imported kserve
with an empty command line. Written against kserve 0.21 (the ``[serve]`` extra pins it):
``ModelServer.start`` is redone here because kserve hard-codes ``host="0.0.0.0"`` and
binds gRPC on ``[::]``. What Triton's clients need beyond kserve (versions, config,
repository index, statistics, bodies without a content type) is in :mod:`._triton_rest`.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kserve import ModelServer
from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
from kserve.errors import InvalidInput, ModelNotFound
from kserve.protocol.rest.multiprocess.server import RESTServerMultiProcess
from kserve.protocol.rest.server import RESTServer
from uvicorn.importer import import_from_string

from ._grpc import ExplainGRPCServer
from ._triton_rest import TritonConformance, add_triton_routes
from .page import add_upload_page

__all__ = ["BodyLimit", "ExplainServer", "ExplainRESTServer"]

log = logging.getLogger(__name__)


class _TooLarge(InvalidInput):
    """A body over the limit, found while reading it (chunked uploads have no Content-Length)."""


def _bad_request(message: str) -> JSONResponse:
    return JSONResponse(status_code=400, content={"error": message})


async def _invalid_input(_request, exc) -> JSONResponse:
    log.info("bad request: %s", exc)  # kserve logs every one with a traceback at ERROR
    return _bad_request(str(exc))


async def _not_found(_request, exc) -> JSONResponse:
    log.info("not found: %s", exc)  # kserve logs a traceback
    return JSONResponse(status_code=404, content={"error": str(exc)})


async def _validation_error(_request, exc: RequestValidationError) -> JSONResponse:
    problems = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        problems.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
    message = "malformed request: " + "; ".join(problems)
    log.info("bad request: %s", message)
    return _bad_request(message)


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is refused with 400 before it is parsed."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers", ())).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._discard(receive, int(length) if length.isdigit() else 0)
            message = f"the body is {length.decode(errors='replace')} bytes; at most {self.max_bytes}"
            log.info("bad request: %s", message)
            response = _bad_request(message)
            return await response(scope, receive, send)
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge(f"the body is over {self.max_bytes} bytes")
            return message

        return await self.app(scope, limited, send)

    async def _discard(self, receive, length: int) -> None:
        """Read and drop a refused body of up to 8x the limit: clients that send it all before reading
        the answer (no ``Expect: 100-continue``) then get the 400 instead of a broken pipe."""
        if length > 8 * self.max_bytes:
            return
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False) and message["type"] == "http.request"


class ExplainRESTServer(RESTServer):
    """kserve's REST server on our host, with our limit and error handlers (picklable for worker processes)."""

    def __init__(self, *args, host: str, max_body_bytes: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.config.host = host
        self.max_body_bytes = max_body_bytes

    def _add_middlewares(self, app) -> None:
        """No per-request timing lines (kserve.trace): uvicorn's access log stays."""

    def create_application(self):
        super().create_application()
        app = import_from_string(FASTAPI_APP_IMPORT_STRING)
        add_triton_routes(app, self.dataplane)
        add_upload_page(app, self.dataplane)
        app.add_middleware(TritonConformance)
        app.add_middleware(BodyLimit, max_bytes=self.max_body_bytes)
        app.add_exception_handler(InvalidInput, _invalid_input)
        app.add_exception_handler(ModelNotFound, _not_found)
        app.add_exception_handler(RequestValidationError, _validation_error)


class ExplainServer(ModelServer):
    """``kserve.ModelServer`` serving REST and (unless ``options.grpc_port`` is 0) gRPC on ``options.host``."""

    def __init__(self, options) -> None:
        super().__init__(
            http_port=options.port,
            grpc_port=options.grpc_port or 8081,
            workers=options.workers,
            enable_grpc=False,  # ours instead (kserve's binds every interface)
            enable_docs_url=False,
            enable_latency_logging=False,
            grace_period=options.grace_period,
        )
        self.options = options

    def start(self, models) -> None:
        self._register_and_check_atleast_one_model_is_ready(models)
        common = (FASTAPI_APP_IMPORT_STRING, self.dataplane, self.model_repository_extension, self.http_port)
        settings = dict(
            workers=self.workers,
            grace_period=self.grace_period,
            event_loop=self.event_loop,
            timeout_keep_alive=self.timeout_keep_alive,
        )
        rest = ExplainRESTServer(
            *common, host=self.options.host, max_body_bytes=self.options.limits.max_body_bytes, **settings
        )
        if self.workers > 1:
            self._rest_multiprocess_server = RESTServerMultiProcess(*common, **settings)
            self._rest_multiprocess_server._rest_server = rest  # ours: same settings, our host and handlers
            self.servers.append(self._rest_multiprocess_server.start())
        else:
            self._rest_server = rest
            self.servers.append(rest.start())
        if self.options.grpc_port:
            self._grpc_server = ExplainGRPCServer(
                self.options.host,
                self.options.grpc_port,
                self.dataplane,
                self.model_repository_extension,
                kwargs={
                    "grpc_max_send_message_length": 2**31 - 1,
                    "grpc_max_receive_message_length": self.options.limits.max_body_bytes,
                },
                grace_period=self.grace_period,
            )
            self.servers.append(self._grpc_server.start(self.options.threads))
        self.setup_event_loop()
        self.register_signal_handler()
        asyncio.run(self._serve())
