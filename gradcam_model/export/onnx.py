"""Export a ``GradCAMModel`` to ONNX through ``torch.onnx.export(..., dynamo=True)``."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path

import torch

from .._atomic import check_target, write_bytes_atomic
from ..contract import INPUT_NAMES, output_names
from ..errors import ExportError, first_line, foreign_errors
from ..graph.wrapper import GradCAMModel
from .metadata import metadata_for
from .onnx_backward import simplify_backward
from .onnx_fold import fold_reduced_gradients
from .onnx_passes import share_transposed_weights
from .retrace import decompose_only_when_needed, prepare_graph

__all__ = ["export_onnx", "DEFAULT_OPSET", "quiet"]

log = logging.getLogger(__name__)

DEFAULT_OPSET = 20  # ScatterElements(reduction="add") needs 16; ORT >= 1.17 runs 20 fully
_PROTOBUF_LIMIT = 2**31 - 1


def example_inputs(wrapper: GradCAMModel, batch: int = 2) -> tuple[torch.Tensor, ...]:
    """Export example: batch >= 2 (symbolic tracing specializes 0 and 1), the build size."""
    device = next(iter(wrapper.buffers())).device
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(batch, wrapper.in_channels, *wrapper.example_size, generator=gen).to(device)
    if wrapper.class_input:
        return image, torch.full((batch,), -1, dtype=torch.long, device=device)
    return (image,)


def dynamic_shapes(wrapper: GradCAMModel) -> dict:
    batch = torch.export.Dim.DYNAMIC
    image = {0: batch}
    if wrapper.dynamic_spatial:
        image.update({2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC})
    shapes = {"image": image}
    if wrapper.class_input:
        shapes["target_class"] = {0: batch}
    return shapes


class _StepLog(io.TextIOBase):
    """What torch.onnx prints, logged as it comes: its step lines at INFO (progress), the rest at DEBUG."""

    def __init__(self) -> None:
        super().__init__()
        self._partial = ""  # print() writes its arguments, separators and the newline one call each

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            if line.startswith("[torch.onnx] "):
                log.info("torch.onnx: %s", line.removeprefix("[torch.onnx] "))
            elif line.strip():
                log.debug("torch.onnx output: %s", line)
        return len(text)

    def close(self) -> None:
        self.write("\n")  # a last line without its newline
        super().close()


@contextlib.contextmanager
def quiet():
    """torch.onnx prints progress to stdout and warns about deprecations; keep the library silent."""
    with warnings.catch_warnings(), _StepLog() as sink, contextlib.redirect_stdout(sink):
        warnings.simplefilter("ignore")
        yield


@foreign_errors("the ONNX export", ExportError)
def export_onnx(
    wrapper: GradCAMModel, path: str | os.PathLike, *, opset: int | None = None, overwrite: bool = False
) -> Path:
    """Write ``wrapper`` as an ONNX artifact at ``path`` and return the path.

    The graph keeps the contract's input/output names, a dynamic batch (and dynamic
    height/width when the wrapper has them, as ``batch``, ``height``, ``width``), and
    the metadata in ``metadata_props``. It passes ``onnx.checker`` before it is
    written; the write is atomic and refuses an existing file unless ``overwrite``.
    """
    import onnx

    if not isinstance(wrapper, GradCAMModel):
        raise ExportError(f"export_onnx expects a GradCAMModel, got {type(wrapper).__name__}")
    target = check_target(path, overwrite=overwrite)
    opset = DEFAULT_OPSET if opset is None else int(opset)
    args = example_inputs(wrapper)
    input_names = list(INPUT_NAMES[: len(args)])
    try:
        # torch.onnx's second re-trace changes nothing in our graph once in-place ops are gone: skip it
        with quiet(), torch.inference_mode(False), decompose_only_when_needed():
            program = torch.onnx.export(
                prepare_graph(wrapper.graph),
                args,
                dynamo=True,
                input_names=input_names,
                output_names=list(output_names(wrapper.method)),
                opset_version=opset,
                dynamic_shapes=dynamic_shapes(wrapper),
                external_data=False,
                optimize=True,
                verbose=None,  # its step lines: logged by quiet() as they come, the progress of a long call
            )
        proto = program.model_proto
    except Exception as exc:
        raise ExportError(
            f"torch.onnx.export failed for {wrapper.architecture} at {wrapper.target_layer!r}: {first_line(exc)}"
        ) from exc
    _name_dynamic_axes(proto, input_names)
    share_transposed_weights(proto)  # one copy of each Linear weight the gradient also uses
    simplify_backward(proto)  # fewer elementwise passes and layout round trips in ONNX Runtime
    fold_reduced_gradients(proto)  # a gradient that is only averaged reads a small folded weight
    meta = metadata_for(wrapper, "onnx", opset=opset)
    del proto.metadata_props[:]
    for key, value in meta.to_props().items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = f"gradcam_model artifact: {meta.architecture} {meta.method} at {meta.target_layer}"
    data = _serialize(proto)  # once: the size check, onnx.checker and the file all read these bytes
    try:
        onnx.checker.check_model(data)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the exported ONNX graph fails onnx.checker: {exc}") from exc
    write_bytes_atomic(target, data, overwrite=overwrite)
    log.info("wrote %s (%.1f MB)", target, target.stat().st_size / 1e6)
    return target


def _serialize(proto) -> bytes:
    """The model's bytes, or an ExportError past protobuf's 2 GiB limit for one message."""
    try:
        data = proto.SerializeToString()
    except ValueError:  # some protobuf builds refuse to encode a message past 2 GiB
        data = None
    if data is None or len(data) > _PROTOBUF_LIMIT:
        raise ExportError(
            f"the ONNX graph is {proto.ByteSize() / 2**30:.1f} GiB, over protobuf's 2 GiB single-file limit; "
            "use export_torchscript for this model"
        )
    return data


def _name_dynamic_axes(proto, input_names) -> None:
    """Rename the exporter's symbols (``s40``...) to ``batch``, ``height``, ``width`` everywhere."""
    names = {}
    image = next(i for i in proto.graph.input if i.name == "image")
    for axis, name in ((0, "batch"), (2, "height"), (3, "width")):
        dim = image.type.tensor_type.shape.dim[axis]
        if dim.dim_param:
            names[dim.dim_param] = name
    for value in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in names:
                dim.dim_param = names[dim.dim_param]
