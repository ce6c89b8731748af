"""Process-level plumbing for the command line: SIGTERM unwinding, log routing, native stderr capture."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import tempfile
import threading

__all__ = ["Terminated", "sigterm_unwinds", "logging_to_stderr", "native_stderr_captured"]

log = logging.getLogger(__name__)


class Terminated(BaseException):
    """SIGTERM (``docker stop``, a CI timeout): unwinds like Ctrl-C so every temporary file is removed."""


@contextlib.contextmanager
def sigterm_unwinds():
    """SIGTERM raises :class:`Terminated` (main thread only), so ``finally`` blocks remove temporaries."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def logging_to_stderr(verbose: int):
    """Send the package's log records to stderr at WARNING, INFO (-v) or DEBUG (-vv), for this call only."""
    logger = logging.getLogger("gradcam_model")
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler.setLevel(level)  # a progress display may lower the logger's level; the terminal keeps this one
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


class _StderrHandler(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stderr`` is now (it moves while native output is captured)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.setStream(sys.stderr)
        super().emit(record)


@contextlib.contextmanager
def native_stderr_captured():
    """Keep C libraries' own lines (libpng, OpenCV, ONNX Runtime) off the terminal; log them at debug level.

    File descriptor 2 goes to a temporary file for the duration; Python's ``sys.stderr``
    keeps writing where it did, so our messages, warnings and progress bar still show.
    """
    stream = sys.stderr
    try:
        stream.flush()
        saved = os.dup(2)
    except (AttributeError, OSError, ValueError):  # no file descriptor 2 to protect
        yield
        return
    try:
        python_on_fd2 = stream.fileno() == 2
    except (AttributeError, OSError, ValueError):  # sys.stderr is not a file (captured): it stays as it is
        python_on_fd2 = False
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        if python_on_fd2:
            encoding = getattr(stream, "encoding", None) or "utf-8"
            sys.stderr = open(os.dup(saved), "w", encoding=encoding, errors="backslashreplace", buffering=1)
        try:
            yield
        finally:
            if python_on_fd2:
                sys.stderr.flush()
                sys.stderr.close()
                sys.stderr = stream
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            native = sink.read().decode("utf-8", "replace").strip()
            if native:
                log.debug("native libraries wrote to stderr:\n%s", native)
