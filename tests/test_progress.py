"""The progress of long steps: a stage line on a terminal, nothing in a pipe, library logs as the detail."""

from __future__ import annotations

import io
import logging
import time

import pytest

from gradcam_model._process import logging_to_stderr
from gradcam_model.cli._progress import stage
from gradcam_model.export.onnx import quiet


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run_stage(monkeypatch, stream, verbose: int = 0) -> str:
    monkeypatch.setattr("sys.stderr", stream)
    with logging_to_stderr(verbose), stage("tracing", verbose=verbose, interval=0.01):
        logging.getLogger("gradcam_model.graph.wrapper").info("checking the dynamic-size graph at 97x81")
        time.sleep(0.1)
    return stream.getvalue()


def test_a_stage_on_a_terminal_counts_seconds_and_shows_the_latest_step(monkeypatch):
    out = _run_stage(monkeypatch, _Terminal())
    assert out.startswith("\r\x1b[Kgradcam: tracing...")
    assert "gradcam: tracing... 0 s (checking the dynamic-size graph at 97x81)" in out
    final = out.rsplit("\r\x1b[K", 1)[1]
    assert final.startswith("gradcam: tracing: done in 0.1 s") and final.endswith("\n")
    # the INFO record was the stage's detail, not a log line on the terminal (that takes -v)
    assert "INFO" not in out
    assert logging.getLogger("gradcam_model").level == logging.NOTSET  # restored


def test_a_stage_in_a_pipe_prints_nothing(monkeypatch):
    assert _run_stage(monkeypatch, io.StringIO()) == ""


def test_a_stage_with_verbose_prints_one_line_and_leaves_the_logs_to_logging(monkeypatch):
    out = _run_stage(monkeypatch, _Terminal(), verbose=1)
    assert out.splitlines() == [
        "gradcam: tracing...",
        "INFO gradcam_model.graph.wrapper: checking the dynamic-size graph at 97x81",
    ]


def test_a_failed_stage_says_so(monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    with pytest.raises(ValueError), stage("exporting onnx", interval=10):
        raise ValueError("boom")
    assert terminal.getvalue().rsplit("\r\x1b[K", 1)[1].startswith("gradcam: exporting onnx: failed after 0.0 s")


def test_torch_onnx_step_lines_become_progress_logs(caplog):
    with caplog.at_level(logging.DEBUG, logger="gradcam_model.export.onnx"), quiet():
        print("[torch.onnx]", "Run decompositions...")  # as torch.onnx prints: one write per argument
        print("something else torch printed")
        print("a last line without its newline", end="")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "torch.onnx: Run decompositions..."),
        ("DEBUG", "torch.onnx output: something else torch printed"),
        ("DEBUG", "torch.onnx output: a last line without its newline"),
    ]
