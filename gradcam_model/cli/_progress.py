"""Progress of a command's long steps on stderr: a stage line that counts seconds and shows the latest step.

The library never prints: it logs its steps at INFO (``gradcam_model.*`` loggers,
torch.onnx's own step lines included). On an interactive terminal, :func:`stage`
shows one line per step that counts the seconds while the step runs, with the
latest of those log lines beside it, and ends it with the time the step took.
With ``-v`` the log lines themselves are the progress (no rewritten line); in a
pipe nothing is shown (stdout's summary lines carry the times).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time

from ._common import PROG

__all__ = ["stage"]

_LOGGER = "gradcam_model"


class _Latest(logging.Handler):
    """Keeps the message of the latest INFO record of the package."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.message = ""

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):  # a record that cannot be formatted is just not shown
            self.message = record.getMessage().splitlines()[0]


@contextlib.contextmanager
def stage(message: str, *, verbose: int = 0, interval: float = 1.0):
    """Show ``message`` as a step of the command while the body runs (see the module docstring)."""
    stream = sys.stderr
    if not stream.isatty():
        yield
        return
    if verbose:
        print(f"{PROG}: {message}...", file=stream, flush=True)
        yield
        return
    logger = logging.getLogger(_LOGGER)
    latest = _Latest()
    old_level = logger.level
    logger.addHandler(latest)
    logger.setLevel(min(old_level or logging.WARNING, logging.INFO))
    started = time.perf_counter()
    done = threading.Event()
    width = 100

    def line(text: str) -> None:
        stream.write("\r\x1b[K" + text[:width])
        stream.flush()

    def beat() -> None:
        while not done.wait(interval):
            detail = f" ({latest.message})" if latest.message else ""
            line(f"{PROG}: {message}... {time.perf_counter() - started:.0f} s{detail}")

    line(f"{PROG}: {message}...")
    thread = threading.Thread(target=beat, name="gradcam-progress", daemon=True)
    thread.start()
    outcome = "failed after"
    try:
        yield
        outcome = "done in"
    finally:
        done.set()
        thread.join()
        logger.removeHandler(latest)
        logger.setLevel(old_level)
        line(f"{PROG}: {message}: {outcome} {time.perf_counter() - started:.1f} s")
        stream.write("\n")
        stream.flush()
