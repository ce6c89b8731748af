"""What Triton's HTTP client expects of a v2 server beyond kserve 0.21: versions, config, index, statistics.

- ``/v2/models/NAME/versions/1/...`` is ``/v2/models/NAME/...`` (an artifact is the
  model's one version); another version is a 404 naming the versions there are.
- ``POST /v2/models/NAME/infer`` is ours (:mod:`.v2_rest`): a body without the binary
  extension's ``Inference-Header-Content-Length`` is JSON whatever its content type
  (tritonclient and ``curl -d`` send none; kserve took it for binary and answered 400).
- ``GET /v2/models/NAME`` lists the version; ``GET /v2/models/NAME/config`` (Triton's
  ModelConfig as JSON), ``POST /v2/repository/index`` and ``GET /v2/models[/NAME]/stats``
  answer as Triton does.
"""

from __future__ import annotations

import logging
import re

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from .v2 import VERSION, v2_config, v2_metadata

__all__ = ["TritonConformance", "add_triton_routes"]

log = logging.getLogger(__name__)

_VERSIONED = re.compile(r"^/v2/models/([^/]+)/versions/([^/]+)(/.*)?$")


class TritonConformance:
    """ASGI middleware: ``/versions/1/`` paths are the model's own; another version is a 404."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        match = _VERSIONED.match(scope["path"])
        if match:
            name, version, rest = match.group(1), match.group(2), match.group(3) or ""
            if version != VERSION:
                message = f'model "{name}" has no version "{version}"; its versions: ["{VERSION}"]'
                log.info("not found: %s", message)
                return await JSONResponse(status_code=404, content={"error": message})(scope, receive, send)
            path = f"/v2/models/{name}{rest}"
            scope = {**scope, "path": path, "raw_path": path.encode()}
        return await self.app(scope, receive, send)


def add_triton_routes(app, dataplane) -> None:
    """Add the routes ahead of kserve's (its ``/v2/models/{name}`` would take ``/v2/models/stats``)."""

    def model(name: str):
        return dataplane.get_model_from_registry(name)  # ModelNotFound: 404

    async def metadata(model_name: str):
        found = model(model_name)
        return {"name": model_name, "versions": [VERSION], "platform": "",
                **v2_metadata(model_name, found.explainer.metadata)}  # fmt: skip

    async def config(model_name: str):
        found = model(model_name)
        return v2_config(model_name, found.explainer.metadata, found.options.limits.max_instances)

    async def index():
        names = dataplane.model_registry.get_models()
        return [{"name": n, "version": VERSION, "state": "READY" if model(n).ready else "UNAVAILABLE"} for n in names]

    async def stats(model_name: str | None = None):
        names = [model_name] if model_name else list(dataplane.model_registry.get_models())
        records = []
        for name in names:
            found = model(name)
            records.append(found.stats.as_json(name, found.batcher.executions))
        return {"model_stats": records}

    async def infer(model_name: str, request: Request):
        body, header_length = await model(model_name).infer_rest(
            await request.body(), request.headers.get("inference-header-content-length")
        )
        if header_length is None:
            return Response(body, media_type="application/json")
        return Response(
            body,
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(header_length)},
        )

    async def all_stats():
        return await stats(None)

    before = len(app.router.routes)
    app.add_api_route("/v2/models/stats", all_stats, methods=["GET"], include_in_schema=False)
    app.add_api_route("/v2/models/{model_name}/stats", stats, methods=["GET"], include_in_schema=False)
    app.add_api_route("/v2/models/{model_name}/config", config, methods=["GET"], include_in_schema=False)
    app.add_api_route("/v2/models/{model_name}", metadata, methods=["GET"], include_in_schema=False)
    app.add_api_route("/v2/models/{model_name}/infer", infer, methods=["POST"], include_in_schema=False)
    app.add_api_route("/v2/repository/index", index, methods=["POST"], include_in_schema=False)
    ours = app.router.routes[before:]
    del app.router.routes[before:]
    app.router.routes[0:0] = ours
