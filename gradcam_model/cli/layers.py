"""``gradcam layers``: list the candidate target layers of a model."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from . import _common as common

__all__ = ["register", "run"]


def register(sub, parents: Sequence[argparse.ArgumentParser]) -> None:
    """Add ``layers`` to the ``gradcam`` subcommands."""
    p = sub.add_parser(
        "layers",
        help="list candidate target layers",
        description="List candidate target layers.",
        parents=[common.model_options(), common.input_size_option(), *parents],
    )
    p.set_defaults(handler=run, needs=("[export]", ("torch", "torchvision")))


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape[1:])


def _layer_note(info) -> str:
    if info.problem:
        return f"refused: {info.problem}"
    if info.passthrough:
        return "returns its input"
    if info.layout.kind != "NCHW":
        return info.layout.describe(info.output_shape)
    return ""


def run(args: argparse.Namespace) -> int:
    """Print the layers whose outputs are [N, C, h, w] maps, marking the automatic choice."""
    import torch

    from ..graph.layers import list_layers

    model = common.load_model(args, args.num_classes)
    example = torch.randn(1, 3, *args.input_size, generator=torch.Generator().manual_seed(0))
    infos = list_layers(model, example)
    if not infos:
        print(f"{args.arch} has no layer with an image map at {args.input_size[0]}x{args.input_size[1]}")
        return 0
    width = max(len("name"), *(len(i.name) for i in infos)) + 2
    type_width = max(len("type"), *(len(i.type) for i in infos)) + 2
    print(f"  {'name':<{width}}{'type':<{type_width}}{'map (C x h x w)':<18}{'calls':>5}  reaches logits  note")
    for info in infos:
        mark = "*" if info.auto else " "
        print(
            f"{mark} {info.name:<{width}}{info.type:<{type_width}}{_shape_text((0, *info.map_shape)):<18}"
            f"{info.calls:>5}  {'yes' if info.influences_logits else 'no':<14}  {_layer_note(info)}".rstrip()
        )
    auto = next((i.name for i in infos if i.auto), None)
    if auto:
        print(f"* auto: --target-layer auto picks {auto!r} (the last map of the image on the path to the logits)")
    else:
        print("no automatic choice at this input size; pass --target-layer NAME")
    print("fullgrad and guided-backprop read no target layer (the input gradient): --target-layer is ignored")
    return 0
