"""``gradcam demo``: the offline end-to-end demo (EfficientNet-Lite0 with ImageNet weights)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from . import _common as common

__all__ = ["register", "run"]


def register(sub, parents: Sequence[argparse.ArgumentParser]) -> None:
    """Add ``demo`` to the ``gradcam`` subcommands."""
    p = sub.add_parser(
        "demo",
        help="offline demo: EfficientNet-Lite0 (ImageNet) on bundled photos",
        description="Export EfficientNet-Lite0 with real ImageNet weights (no download), validate it, and "
        "explain scikit-image's photos and a cat|coffee picture through the ONNX artifact.",
        parents=[common.picture_options(), *parents],
    )
    p.add_argument("--out", default="gradcam-demo", metavar="DIR", help="output folder (default: gradcam-demo)")
    p.set_defaults(handler=run, needs=("[export,demo]", ("torch", "torchvision", "onnx", "onnxscript", "timm")))


def run(args: argparse.Namespace) -> int:
    """Run the demo into ``--out`` and print where everything went."""
    from ..demo import run_demo

    common.check_alpha(args.alpha)
    out = common.output_dir(args.out)
    result = run_demo(out, colormap=args.colormap, alpha=args.alpha, on_step=common.status)
    print(result.table())
    print()
    print(f"artifacts: {', '.join(str(p) for p in result.artifacts.values())}")
    print(f"parity report: {result.report}")
    print(f"overlays: {out / 'overlays'}; grid: {result.grid}")
    command = common.runnable_command()
    print(f"try: {command} explain {result.artifacts['onnx']} {out / 'photos'} --out {out / 'explain'}")
    if command.endswith(f"/{common.PROG}"):
        print(f"(gradcam is not on PATH here: `source {Path(command).parent}/activate` puts it there)")
    print(f"done in {result.seconds:.0f} s")
    return 0 if result.ok else 1
