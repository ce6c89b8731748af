"""Export a ``GradCAMModel`` to TorchScript for libtorch (C++) and ``torch.jit.load``."""

from __future__ import annotations

import copy
import io
import logging
import os
import warnings
from pathlib import Path

import torch
from torch import fx

from .._atomic import check_target, write_bytes_atomic
from ..errors import ExportError, first_line, foreign_errors
from ..graph.wrapper import GradCAMModel
from .metadata import METADATA_KEY, metadata_for

__all__ = ["export_torchscript", "scriptable"]

log = logging.getLogger(__name__)


# symbolic-shape helpers that TorchScript knows under their Python builtin names
_SYM_BUILTINS = {torch.sym_max: max, torch.sym_min: min, torch.sym_float: float, torch.sym_int: int}


def scriptable(graph_module: fx.GraphModule) -> fx.GraphModule:
    """A copy of a traced graph that ``torch.jit.script`` compiles with every size dynamic.

    ``torch.jit.trace`` would bake the sizes the graph reads through ``aten.sym_size``
    (the batch becomes a constant), so we script instead, after three rewrites:
    ``sym_size`` becomes ``Tensor.size(dim)``; op overloads (``aten.add.Tensor``), which
    TorchScript cannot call, become their packets (``aten.add``); ``torch.sym_max`` and
    kin become the builtins ``max``... The traced graph already takes constants' device
    from the input image (see ``capture``), so the module also runs after
    ``torch.jit.load(..., map_location="cuda")``. Parameters are shared, not copied.
    """
    graph = copy.deepcopy(graph_module.graph)
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if node.target is torch.ops.aten.sym_size.int:
            with graph.inserting_before(node):
                size = graph.call_method("size", node.args)
            node.replace_all_uses_with(size)
            graph.erase_node(node)
            continue
        if isinstance(node.target, torch._ops.OpOverload):
            node.target = node.target.overloadpacket
        node.target = _SYM_BUILTINS.get(node.target, node.target)
    graph.eliminate_dead_code()
    return fx.GraphModule(graph_module, graph, class_name="GradCAMArtifact")


@foreign_errors("the TorchScript export", ExportError)
def export_torchscript(wrapper: GradCAMModel, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``wrapper`` as a TorchScript artifact at ``path`` and return the path.

    ``torch.jit.load(path)`` gives a module whose ``forward(image[, target_class])``
    returns the contract's five outputs at any batch size (and any height/width when
    the wrapper has dynamic spatial sizes); the metadata is the extra file
    ``gradcam.json``. The write is atomic and refuses an existing file unless ``overwrite``.
    """
    if not isinstance(wrapper, GradCAMModel):
        raise ExportError(f"export_torchscript expects a GradCAMModel, got {type(wrapper).__name__}")
    target = check_target(path, overwrite=overwrite)
    meta = metadata_for(wrapper, "torchscript")
    try:
        with warnings.catch_warnings(), torch.inference_mode(False):
            warnings.simplefilter("ignore")  # torch.jit's deprecation notice
            module = torch.jit.script(scriptable(wrapper.graph))
            buffer = io.BytesIO()
            torch.jit.save(module, buffer, _extra_files={METADATA_KEY: meta.to_json()})
    except Exception as exc:
        raise ExportError(
            f"TorchScript export failed for {wrapper.architecture} at {wrapper.target_layer!r}: {first_line(exc)}"
        ) from exc
    write_bytes_atomic(target, buffer.getvalue(), overwrite=overwrite)
    log.info("wrote %s (%.1f MB)", target, target.stat().st_size / 1e6)
    return target
