"""torch's own log lines (symbolic-shape reasoning, export internals) routed to our debug log.

Tracing a wrapper can make torch log warnings about its internal shape reasoning
(``symbolic_shapes.py ... NotImplementedError``) although nothing is wrong for the
user. Inside :func:`torch_logs_at_debug` those records go to the
``gradcam_model.torch`` logger at DEBUG level (``gradcam -vv`` shows them) instead of
torch's handlers on the terminal.
"""

from __future__ import annotations

import contextlib
import logging

__all__ = ["torch_logs_at_debug"]

log = logging.getLogger("gradcam_model.torch")


class _ToDebug(logging.Handler):
    """Re-logs a torch record on our logger at DEBUG, naming the torch logger it came from."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
        except Exception:  # a record torch could not format either: keep its raw text
            message = str(record.msg)
        log.debug("%s %s: %s", record.levelname, record.name, message)


@contextlib.contextmanager
def torch_logs_at_debug():
    """Send every torch logger's records to our debug log for the duration (imports torch first)."""
    import torch  # noqa: F401 - torch installs its log handlers on import: swap them after that

    forward = _ToDebug()
    swapped: list[tuple[logging.Logger, list[logging.Handler]]] = []
    for name, logger in list(logging.root.manager.loggerDict.items()):
        ours = name == "torch" or (name.startswith("torch.") and "__" not in name)  # not torch's artifact/trace logs
        if ours and isinstance(logger, logging.Logger) and logger.handlers:
            swapped.append((logger, logger.handlers[:]))
            logger.handlers[:] = [forward]
    try:
        yield
    finally:
        for logger, handlers in swapped:
            logger.handlers[:] = handlers
