"""The upload page at ``GET /``: choose or drop a picture and see its classes, overlay and map.

One self-contained HTML file (``assets/upload.html``: its CSS and script inline, nothing
fetched but the server's own ``:explain``). The model's name, method and classes are
written into the page as a JSON block whose ``<`` are escaped, and the script shows every
text with ``textContent``; errors show the server's own message.
"""

from __future__ import annotations

import json
from importlib import resources

__all__ = ["add_upload_page", "upload_page"]


def upload_page(name: str, meta) -> str:
    """The page for model ``name`` whose artifact metadata is ``meta``."""
    record = {
        "name": name, "architecture": meta.architecture, "method": meta.method, "target_layer": meta.target_layer,
        "num_classes": meta.num_classes, "class_names": meta.class_names, "class_input": meta.class_input,
    }  # fmt: skip
    page = resources.files(__package__).joinpath("assets", "upload.html").read_text(encoding="utf-8")
    return page.replace("__MODEL__", json.dumps(record, ensure_ascii=False).replace("<", "\\u003c"))


def add_upload_page(app, dataplane) -> None:
    """``GET /``: the page for the server's model (the first, when a server holds several).

    Placed ahead of kserve's own ``GET /`` (a liveness answer, ``{"status": "alive"}``, which
    ``/v2/health/live`` also gives).
    """
    from fastapi.responses import HTMLResponse

    async def page():
        name = next(iter(dataplane.model_registry.get_models()))
        model = dataplane.get_model_from_registry(name)
        return HTMLResponse(upload_page(name, model.explainer.metadata))

    app.add_api_route("/", page, methods=["GET"], include_in_schema=False)
    app.router.routes.insert(0, app.router.routes.pop())
