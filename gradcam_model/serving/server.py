"""The explanation server: an artifact behind KServe's Python model server (v1 and v2 REST), torch-free.

``kserve.Model`` runs the requests; ``kserve.ModelServer`` serves them with uvicorn,
here bound to 127.0.0.1 unless told otherwise (kserve itself binds 0.0.0.0 and opens a
gRPC port on every interface; we open no gRPC port). User errors become HTTP 400 with
``{"error": "..."}``, including bodies over the size limit and malformed v2 requests
(FastAPI's 422). Requests run on a small thread pool so the event loop keeps answering;
ONNX Runtime runs on one thread that batches the requests queued meanwhile (:mod:`.batcher`).
Requires the ``[serve]`` extra (``pip install "gradcam_model[serve]"``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..errors import ArtifactError, GradCAMError, InputError
from .batcher import Batcher
from .protocol import ServeLimits, parse_v1, v1_response, v2_inputs, v2_metadata, v2_tensors

__all__ = ["ServeOptions", "build_model", "serve"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeOptions:
    """How to serve one artifact."""

    name: str
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    threads: int = 4  # request threads (decode, preprocess, encode) in each worker process
    max_batch: int = 8  # images in one explainer call: requests queued while it runs go together
    limits: ServeLimits = ServeLimits()
    colormap: str = "jet"
    alpha: float = 0.4
    grace_period: int = 30  # seconds in-flight requests get after SIGTERM


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


def build_model(artifact: str | os.PathLike, options: ServeOptions):
    """A loaded, ready ``kserve.Model`` serving ``artifact`` (an ``.onnx`` file) as ``options.name``."""
    path = Path(artifact)
    if path.suffix.lower() != ".onnx":
        raise ArtifactError(f"{path}: gradcam serve runs .onnx artifacts under ONNX Runtime (torch-free)")
    kserve = _kserve()
    from kserve.errors import InvalidInput
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

    class ExplainerModel(kserve.Model):
        """One artifact under ONNX Runtime; picklable (worker processes reload the session)."""

        def __init__(self) -> None:
            super().__init__(options.name)
            self.artifact = str(artifact)
            self.load()

        def load(self) -> bool:
            from ..runtime import load_explainer

            self.explainer = load_explainer(self.artifact)
            self.batcher = Batcher(self.explainer, options.max_batch)
            self.pool = ThreadPoolExecutor(options.threads, thread_name_prefix="gradcam-serve")
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
            try:
                return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
            except InputError as exc:
                raise InvalidInput(str(exc)) from None

        async def predict(self, payload, headers=None):
            if isinstance(payload, InferRequest):
                return await self._offload(self._v2, payload)
            return await self._offload(self._v1, payload, False)

        async def explain(self, payload, headers=None):
            if isinstance(payload, InferRequest):
                raise InvalidInput("explain takes a v1 body; use POST /v2/models/NAME/infer for tensors")
            return await self._offload(self._v1, payload, True)

        def _v1(self, body, explain: bool) -> dict:
            if isinstance(body, (bytes, bytearray)):  # a body sent without a JSON content type
                try:
                    body = json.loads(body)
                except (ValueError, UnicodeDecodeError):
                    raise InputError('the body is not JSON; send {"instances": [...]}') from None
            batch = parse_v1(body, self.explainer.metadata, options.limits, explain=explain)
            result = self.batcher.submit(batch.images, batch.classes)
            return v1_response(result, batch, explain=explain, colormap=options.colormap, alpha=options.alpha)

        def _v2(self, request) -> object:
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
            image, target = v2_inputs(tensors, self.explainer.metadata)
            if image.shape[0] > options.limits.max_instances:
                raise InputError(f"{image.shape[0]} images in one request; at most {options.limits.max_instances}")
            result = self.batcher.submit(image, target)
            requested = [o.name for o in request.request_outputs] if request.request_outputs else None
            outputs = []
            for name, datatype, array in v2_tensors(result, requested):
                out = InferOutput(name=name, shape=list(array.shape), datatype=datatype)
                out.set_data_from_numpy(array, binary_data=False)
                outputs.append(out)
            rid = request.id or uuid.uuid4().hex  # the v2 protocol echoes a given id
            return InferResponse(response_id=rid, model_name=self.name, infer_outputs=outputs)

    return ExplainerModel()


def serve(artifact: str | os.PathLike, options: ServeOptions) -> None:
    """Serve ``artifact`` until SIGTERM or SIGINT (in-flight requests finish, up to ``grace_period`` s)."""
    sys.argv = sys.argv[:1]  # worker processes (spawned) import kserve, which parses the argv they inherit
    if "cv2" in sys.modules:
        log.warning("OpenCV is already loaded: its pixel limit stays %s", os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS"))
    os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(options.limits.max_pixels)  # read when OpenCV loads
    model = build_model(artifact, options)
    from ._kserve_app import ExplainServer

    log.info("serving %s as %s on http://%s:%d", artifact, options.name, options.host, options.port)
    ExplainServer(options).start([model])
