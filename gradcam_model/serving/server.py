"""The explanation server: an artifact behind KServe's Python model server (v1 and v2 REST, v2 gRPC), torch-free.

``kserve.Model`` runs the requests; ``kserve.ModelServer`` serves them with uvicorn and
grpcio, here both bound to 127.0.0.1 unless told otherwise (kserve itself binds 0.0.0.0
and ``[::]``). User errors become HTTP 400 with ``{"error": "..."}`` (gRPC
INVALID_ARGUMENT), including bodies over the size limit and malformed v2 requests
(FastAPI's 422). Requests run on a small thread pool so the event loop keeps answering;
ONNX Runtime runs on one thread that batches the requests queued meanwhile (:mod:`.batcher`).
Requires the ``[serve]`` extra (``pip install "gradcam_model[serve]"``).
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..errors import ArtifactError, GradCAMError, InputError
from .batcher import Batcher
from .protocol import ServeLimits, parse_v1, v1_response
from .v2 import BYTES_OUTPUTS, VERSION, requested_outputs, v2_inputs, v2_metadata, v2_outputs
from .v2_rest import encode_response, parse_request

__all__ = ["PortInUseError", "ServeOptions", "Statistics", "build_model", "serve"]

log = logging.getLogger(__name__)


class PortInUseError(GradCAMError):
    """A port the server was told to listen on is taken (``gradcam serve`` exits 3)."""


@dataclass(frozen=True)
class ServeOptions:
    """How to serve one artifact."""

    name: str
    host: str = "127.0.0.1"
    port: int = 8080
    grpc_port: int = 8081  # 0: no gRPC endpoint
    workers: int = 1
    threads: int = 4  # request threads (decode, preprocess, encode) in each worker process
    max_batch: int = 8  # images in one explainer call: requests queued while it runs go together
    limits: ServeLimits = ServeLimits()
    colormap: str = "jet"
    alpha: float = 0.4
    grace_period: int = 30  # seconds in-flight requests get after SIGTERM
    # ONNX Runtime's idle threads spin (its default): ~1 ms less per request on a machine the server has to itself,
    # far more lost when other work needs the cores (docs/serving.md, "Speed")
    ort_spinning: bool = False


def _kserve():
    """Import kserve with an empty command line: ``kserve.model_server`` parses ``sys.argv`` on import."""
    if "kserve" not in sys.modules:
        argv, sys.argv = sys.argv, sys.argv[:1]
        try:
            import kserve  # noqa: F401
        except ImportError:
            raise GradCAMError(
                'gradcam serve needs kserve, which this install lacks: pip install "gradcam_model[serve]"'
            ) from None
        finally:
            sys.argv = argv
    import kserve

    return kserve


class Statistics:
    """Per-model counters for ``GET /v2/models/NAME/stats`` (Triton's statistics extension, in this process)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.success = [0, 0]  # requests, nanoseconds
        self.fail = [0, 0]
        self.images = 0
        self.last_ms = 0

    def record(self, ok: bool, started_ns: int, images: int = 0) -> None:
        elapsed = time.perf_counter_ns() - started_ns
        with self.lock:
            counter = self.success if ok else self.fail
            counter[0] += 1
            counter[1] += elapsed
            self.images += images
            self.last_ms = int(time.time() * 1000)

    def as_json(self, name: str, executions: int) -> dict:
        with self.lock:
            return {
                "name": name,
                "version": VERSION,
                "last_inference": self.last_ms,
                "inference_count": self.images,
                "execution_count": executions,
                "inference_stats": {
                    "success": {"count": self.success[0], "ns": self.success[1]},
                    "fail": {"count": self.fail[0], "ns": self.fail[1]},
                },
                "batch_stats": [],
            }


def serve_logging() -> None:
    """The serving lines (URLs, provider, one line per bad request) at INFO on stdout, beside kserve's own."""
    logger = logging.getLogger("gradcam_model.serving")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False  # once, here (the command line's handler shows warnings only)


class _Requests:
    """What a request does, given ``self.explainer``, ``self.batcher``, ``self.options`` and ``self.name``.

    Each method runs on a request thread and returns ``(answer, images)``; a user error
    is an :class:`InputError`.
    """

    def _v1(self, body, explain: bool) -> tuple[dict, int]:
        if isinstance(body, (bytes, bytearray)):  # a body sent without a JSON content type
            try:
                body = json.loads(body)
            except (ValueError, UnicodeDecodeError):
                raise InputError('the body is not JSON; send {"instances": [...]}') from None
        batch = parse_v1(body, self.explainer.metadata, self.options.limits, explain=explain)
        result = self.batcher.submit(batch.images, batch.classes)
        answer = v1_response(result, batch, explain=explain, colormap=self.options.colormap, alpha=self.options.alpha)
        return answer, batch.images.shape[0]

    def _rest_v2(self, body: bytes, header_length: str | None):
        request = parse_request(body, header_length)
        names = requested_outputs(list(request.outputs) or None, self.explainer.metadata)
        for name in names:
            flag = request.outputs.get(name)
            if name in BYTES_OUTPUTS and not (request.binary_default if flag is None else flag):
                raise InputError(
                    f'output "{name}" holds encoded pictures: ask for it with "parameters": '
                    '{"binary_data": true} (the binary data extension)'
                )
        outputs, count = self._run_v2(request.tensors, names)
        request.id = request.id or uuid.uuid4().hex  # the v2 protocol echoes a given id
        return encode_response(request, self.name, VERSION, outputs), count

    def _run_v2(self, tensors: dict, names: list[str]):
        batch = v2_inputs(tensors, self.explainer.metadata, self.options.limits)
        result = self.batcher.submit(batch.images, batch.classes)
        outputs = v2_outputs(result, batch, names, colormap=self.options.colormap, alpha=self.options.alpha)
        return outputs, batch.images.shape[0]

    def _v2(self, request) -> tuple[object, int]:
        """A v2 request that came through kserve (gRPC): kserve's InferRequest in, InferResponse out."""
        from kserve.errors import InvalidInput
        from kserve.protocol.infer_type import InferOutput, InferResponse

        tensors = {}
        for tensor in request.inputs:
            if tensor.name in tensors:
                raise InputError(f'input "{tensor.name}" is given twice')
            try:
                tensors[tensor.name] = (tensor.datatype, tensor.as_numpy())
            except (ValueError, TypeError, InvalidInput) as exc:
                raise InputError(
                    f'input "{tensor.name}": its data does not fit shape {list(tensor.shape)} and datatype '
                    f"{tensor.datatype} ({str(exc).splitlines()[0]})"
                ) from None
        requested = [o.name for o in request.request_outputs] if request.request_outputs else None
        names = requested_outputs(requested, self.explainer.metadata)
        found, count = self._run_v2(tensors, names)
        outputs = []
        for name, datatype, array in found:
            output = InferOutput(name=name, shape=list(array.shape), datatype=datatype)
            output.set_data_from_numpy(array, binary_data=True)  # raw contents, every one
            outputs.append(output)
        rid = request.id or uuid.uuid4().hex
        response = InferResponse(
            response_id=rid, model_name=self.name, model_version=VERSION, infer_outputs=outputs,
            use_binary_outputs=True,
        )  # fmt: skip
        return response, count


def build_model(artifact: str | os.PathLike, options: ServeOptions):
    """A loaded, ready ``kserve.Model`` serving ``artifact`` (an ``.onnx`` file) as ``options.name``."""
    path = Path(artifact)
    if path.suffix.lower() != ".onnx":
        raise ArtifactError(f"{path}: gradcam serve runs .onnx artifacts under ONNX Runtime (torch-free)")
    kserve = _kserve()
    serve_logging()
    from kserve.errors import InvalidInput
    from kserve.protocol.infer_type import InferRequest

    class ExplainerModel(kserve.Model, _Requests):
        """One artifact under ONNX Runtime; picklable (worker processes reload the session)."""

        def __init__(self) -> None:
            super().__init__(options.name)
            self.artifact = str(artifact)
            self.options = options
            self.load()

        def load(self) -> bool:
            from ..runtime.explainer import OnnxExplainer

            # no spinning: ORT's idle pool threads would take the cores the request threads, the event loop
            # and the clients need between calls (docs/serving.md, "Speed")
            self.explainer = OnnxExplainer(self.artifact, spinning=options.ort_spinning)
            self.batcher = Batcher(self.explainer, options.max_batch)
            self.pool = ThreadPoolExecutor(options.threads, thread_name_prefix="gradcam-serve")
            self.stats = Statistics()
            self.ready = True
            return True

        def __reduce__(self):
            return build_model, (self.artifact, options)

        def validate(self, payload):
            return payload  # ours: every check names the problem (kserve's would 500 on a JSON number)

        def get_input_types(self):
            return v2_metadata(self.name, self.explainer.metadata)["inputs"]

        def get_output_types(self):
            return v2_metadata(self.name, self.explainer.metadata)["outputs"]

        async def _offload(self, fn, *args):
            started = time.perf_counter_ns()
            try:
                answer, images = await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
            except InputError as exc:
                self.stats.record(False, started)
                raise InvalidInput(str(exc)) from None
            except Exception:
                self.stats.record(False, started)
                raise
            self.stats.record(True, started, images)
            return answer

        async def predict(self, payload, headers=None):
            if isinstance(payload, InferRequest):
                return await self._offload(self._v2, payload)
            return await self._offload(self._v1, payload, False)

        async def explain(self, payload, headers=None):
            if isinstance(payload, InferRequest):
                raise InvalidInput("explain takes a v1 body; use POST /v2/models/NAME/infer for tensors")
            return await self._offload(self._v1, payload, True)

        async def infer_rest(self, body: bytes, header_length: str | None) -> tuple[bytes, int | None]:
            """``POST /v2/models/NAME/infer``: the body as sent, the answer as bytes (see :mod:`.v2_rest`)."""
            return await self._offload(self._rest_v2, body, header_length)

    return ExplainerModel()


def _check_port(host: str, port: int, what: str) -> None:
    """PortInUseError naming ``port`` when it cannot be bound on ``host`` now (before any server starts)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn and grpc bind
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                flag = "--grpc-port (0: no gRPC)" if what == "gRPC" else "--port"
                raise PortInUseError(f"{what} port {port} on {host} is in use; choose another with {flag}") from None
            raise GradCAMError(f"cannot listen on {host} port {port}: {exc.strerror or exc}") from None


def _url(scheme: str, host: str, port: int) -> str:
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def serve(artifact: str | os.PathLike, options: ServeOptions) -> None:
    """Serve ``artifact`` until SIGTERM or SIGINT (in-flight requests finish, up to ``grace_period`` s)."""
    sys.argv = sys.argv[:1]  # worker processes (spawned) import kserve, which parses the argv they inherit
    _check_port(options.host, options.port, "HTTP")
    if options.grpc_port:
        if options.grpc_port == options.port:
            raise GradCAMError(f"--grpc-port {options.grpc_port} is the HTTP port; choose another (0: no gRPC)")
        _check_port(options.host, options.grpc_port, "gRPC")
    if "cv2" in sys.modules:
        log.warning("OpenCV is already loaded: its pixel limit stays %s", os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS"))
    os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(options.limits.max_pixels)  # read when OpenCV loads
    model = build_model(artifact, options)
    from ._kserve_app import ExplainServer

    urls = [_url("http", options.host, options.port)]
    if options.grpc_port:
        urls.append(_url("grpc", options.host, options.grpc_port))
    log.info("serving %s as %s on %s; ONNX Runtime runs it on %s (idle threads %s)", artifact, options.name,
             " and ".join(urls), model.explainer.provider, "spin" if options.ort_spinning else "sleep")  # fmt: skip
    ExplainServer(options).start([model])
