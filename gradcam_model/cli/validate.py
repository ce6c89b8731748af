"""``gradcam validate``: the parity of an artifact with the eager model it was exported from."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from . import _common as common

__all__ = ["register", "run"]


def register(sub, parents: Sequence[argparse.ArgumentParser]) -> None:
    """Add ``validate`` to the ``gradcam`` subcommands."""
    p = sub.add_parser(
        "validate",
        help="check an artifact's parity with its model",
        description="Compare an artifact's outputs with the eager reference; exit 1 beyond tolerance, "
        "4 when the runtime cannot load the artifact.",
        parents=[common.model_options(arch_required=False), common.tolerance_options(), *parents],
    )
    p.add_argument("artifact", metavar="ARTIFACT", help=".onnx or .pt artifact")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON ('-' for stdout)")
    p.add_argument(
        "--runtime",
        metavar="R",
        help="run the artifact under R, in float32: onnxruntime[:cpu|cuda|tensorrt], openvino[:CPU|GPU], "
        "onnx-reference, libtorch[:cpu|cuda] (default: ONNX Runtime, CUDA when usable, for .onnx; "
        "libtorch:cpu for .pt)",
    )
    p.add_argument("--junit", metavar="FILE", help="also write a JUnit XML report (one case per output and batch)")
    p.set_defaults(handler=run, needs=("[export]", ("torch", "torchvision")))


def _reference_model(args: argparse.Namespace, meta):
    """The eager model to compare with: ``--arch`` or the recorded architecture, with the trained weights."""
    import torch

    from ..errors import ArchitectureError, GradCAMError
    from ..graph._state import eval_state

    args.arch = args.arch or meta.architecture
    factory = ":" in args.arch and not args.arch.startswith("timm:")
    if not args.weights and not factory:
        # torchvision and timm models are built with random weights here (nothing is downloaded):
        # without the trained weights there is no reference to compare the artifact with
        raise GradCAMError(
            f"validate needs the trained weights {args.artifact} was exported from: pass --weights FILE "
            "(a random-weight model is no reference)"
        )
    # torchvision and timm heads get the artifact's class count; a factory builds its own unless told
    num_classes = args.num_classes or (None if factory else meta.num_classes)
    try:
        model = common.load_model(args, num_classes=num_classes)
    except ArchitectureError as exc:
        if args.arch == meta.architecture:
            raise GradCAMError(f"{exc} (the architecture recorded in {args.artifact}; pass --arch)") from exc
        raise
    with eval_state(model), torch.no_grad():
        classes = int(model(torch.zeros(1, meta.in_channels, *(meta.input_size or meta.example_size))).shape[-1])
    if classes != meta.num_classes:
        raise GradCAMError(
            f"the model has {classes} classes but {args.artifact} was exported with {meta.num_classes}; "
            "check --arch, --num-classes and --weights"
        )
    return model


def _load(args: argparse.Namespace):
    """The artifact under the chosen runtime; ``None`` (after one line on stderr) when the runtime cannot
    load it (exit 4). A missing file or one that is no artifact stays a user error (exit 2)."""
    import sys

    from ..checks.runtimes import load_under, parse_runtime
    from ..errors import ArtifactLoadError
    from ..runtime import load_explainer

    choice = parse_runtime(args.runtime, args.artifact) if args.runtime else None  # exit 2 when unknown
    try:
        return load_explainer(args.artifact, device="cpu") if choice is None else load_under(args.artifact, choice)
    except ArtifactLoadError as exc:
        print(f"{common.PROG}: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return None


def run(args: argparse.Namespace) -> int:
    """Print the parity table (and write it as JSON or JUnit XML); 1 beyond tolerance, 4 unloadable."""
    from ..checks.parity import validate
    from ..checks.runtimes import runtime_info
    from ..checks.tolerances import tolerance_for

    explainer = _load(args)
    if explainer is None:
        return 4
    meta = explainer.metadata
    model = _reference_model(args, meta)
    common.status(f"validating {args.artifact}")
    tolerance = tolerance_for(
        meta.format, cam_atol=args.cam_atol, logits_rtol=args.logits_rtol, noise_factor=args.noise_factor
    )
    report = validate(explainer, model, tolerance=tolerance)
    print(f"parity of {args.artifact} ({meta.format}, {meta.architecture} {meta.method} at {meta.target_layer!r}):")
    print(common.indent(f"runtime: {runtime_info(explainer).describe()}"))
    print(common.indent(report.table()))
    print("ok" if report.ok else "FAILED: " + "; ".join(report.failures()))
    if args.json == "-":
        print(json.dumps(report.to_dict(), indent=2))
    elif args.json:
        common.write_text(Path(args.json), json.dumps(report.to_dict(), indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.junit:
        from ..checks.junit import junit_document

        common.write_text(Path(args.junit), junit_document([report]))
        print(f"wrote {args.junit}")
    return 0 if report.ok else 1
