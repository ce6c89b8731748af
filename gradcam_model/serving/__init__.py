"""Serving artifacts: an explanation server on KServe (``gradcam serve``) and Triton model repositories.

Serve side only (never torch). The server needs the ``[serve]`` extra (kserve); the
Triton writer needs nothing beyond the base install. kserve is imported only when a
server starts. :mod:`.triton_model` is the model Triton's python backend runs
(``gradcam triton --backend python``).
"""

from .protocol import ServeLimits
from .triton import TritonOptions, write_repository

__all__ = ["ServeLimits", "TritonOptions", "write_repository"]
