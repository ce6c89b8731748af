"""torch's own warnings during a build command stay off the terminal; ``-vv`` shows them as debug lines."""

from __future__ import annotations

import logging

import pytest
import torch  # noqa: F401 - torch's log handlers exist, as in a real build command

import gradcam_model.cli.layers
from gradcam_model._torch_logs import torch_logs_at_debug
from gradcam_model.cli import main

SHAPES = "torch.fx.experimental.symbolic_shapes"
LINE = "failed during evaluate_expr(Eq(s0, 1)): NotImplementedError"


@pytest.fixture
def chatty_layers(monkeypatch):
    """``gradcam layers`` whose work makes torch log a symbolic-shapes warning."""

    def run(args):
        logging.getLogger(SHAPES).warning(LINE)
        logging.getLogger("torch._dynamo.later_module").warning("a logger made after the swap")
        return 0

    monkeypatch.setattr(gradcam_model.cli.layers, "run", run)


def test_torch_warnings_stay_off_the_terminal(chatty_layers, capfd):
    assert main(["layers", "--arch", "resnet18"]) == 0
    out, err = capfd.readouterr()
    assert err == "" and out == ""


def test_vv_shows_them_as_debug_lines(chatty_layers, capfd):
    assert main(["-vv", "layers", "--arch", "resnet18"]) == 0
    err = capfd.readouterr().err
    assert f"DEBUG gradcam_model.torch: WARNING {SHAPES}: {LINE}" in err
    assert "a logger made after the swap" in err
    assert err.count(LINE) == 1  # not also through torch's own handler


def test_torch_handlers_come_back():
    logger = logging.getLogger(SHAPES)
    before = logger.handlers[:]
    assert before, "torch installs its handlers on import"
    with torch_logs_at_debug():
        assert logger.handlers != before
    assert logger.handlers == before
