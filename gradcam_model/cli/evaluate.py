"""``gradcam evaluate``: score an artifact's maps on images (serve side: no torch for .onnx).

``--compare-methods`` and ``--randomize-check`` need the eager model: they hand over to
the build side (:mod:`gradcam_model.evaluation`, torch, through :mod:`._evaluate_build`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import _common as common

__all__ = ["register", "run"]

_BUILD_SIDE = ("[export]", ("torch", "torchvision", "onnx", "onnxscript"))


def _metrics(text: str) -> tuple[str, ...]:
    """An argparse type: metric names, comma-separated."""
    from ..runtime.evaluate import METRICS

    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [m for m in chosen if m not in METRICS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"unknown metric {(unknown or [text])[0]!r}; expected some of: {','.join(METRICS)}"
        )
    return chosen


def register(sub, parents: Sequence[argparse.ArgumentParser]) -> None:
    """Add ``evaluate`` to the ``gradcam`` subcommands."""
    from ..runtime.evaluate import BASELINES, DEFAULT_BATCH_SIZE, DEFAULT_STEPS, METRICS, POINTING_TOLERANCE

    p = sub.add_parser(
        "evaluate",
        help="score an artifact's maps (Average Drop, deletion/insertion AUC, pointing game)",
        description="Score an artifact's maps on image files and folders: Average Drop and Increase in Confidence "
        "(Grad-CAM++), deletion and insertion AUC (RISE) and, with --boxes, the pointing game; every perturbed "
        "image runs through the artifact in batches. Writes evaluation.csv (per image), summary.md, summary.json, "
        "deletion.png and insertion.png in --out. Needs no torch for .onnx artifacts, except --compare-methods "
        "and --randomize-check (the eager model: --arch, --weights).",
        parents=[common.model_options(arch_required=False), *parents],
    )
    p.add_argument("artifact", metavar="ARTIFACT", help=".onnx or .pt artifact")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and folders")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--metrics",
        type=_metrics,
        metavar="M,...",
        help=f"some of {','.join(METRICS)} (default: all; pointing_game with --boxes)",
    )
    p.add_argument(
        "--steps",
        type=common.positive_int,
        default=DEFAULT_STEPS,
        metavar="N",
        help=f"deletion/insertion steps (default: {DEFAULT_STEPS})",
    )
    p.add_argument(
        "--baseline",
        choices=BASELINES,
        default="blur",
        help="what deleted pixels become: blur (of the image) or mean (the dataset mean colour); default: blur",
    )
    p.add_argument(
        "--batch-size",
        type=common.positive_int,
        default=DEFAULT_BATCH_SIZE,
        metavar="B",
        help=f"images per artifact run (default: {DEFAULT_BATCH_SIZE})",
    )
    p.add_argument(
        "--boxes",
        metavar="CSV",
        help="object boxes for the pointing game: image,x0,y0,x1,y1 rows, original pixels (see docs/cli.md)",
    )
    p.add_argument(
        "--pointing-tolerance",
        type=common.non_negative_float,
        default=POINTING_TOLERANCE,
        metavar="PX",
        help=f"pointing-game tolerance in input pixels (default: {POINTING_TOLERANCE:g})",
    )
    p.add_argument(
        "--class",
        dest="class_",
        metavar="INDEX|NAME",
        help="class to explain (artifacts exported with --class-input; default: the top prediction)",
    )
    p.add_argument(
        "--target-layer", metavar="NAME", help="layer for --compare-methods/--randomize-check (default: the artifact's)"
    )
    p.add_argument(
        "--compare-methods",
        action="store_true",
        help="score every CAM method on the same images (build side: needs torch and the model)",
    )
    p.add_argument(
        "--randomize-check",
        action="store_true",
        help="model-randomization sanity check (Adebayo et al. 2018; build side: needs torch and the model)",
    )
    p.add_argument(
        "--methods",
        type=_method_list,
        metavar="M[,M...]",
        help="the methods --compare-methods/--randomize-check build, comma-separated (default: every method)",
    )
    p.set_defaults(handler=run)


def _method_list(text: str) -> list[str]:
    """``gradcam,layercam`` -> the names (checked against the methods on the build side, before building)."""
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected method names separated by commas, got {text!r}")
    return names


def run(args: argparse.Namespace) -> int:
    """Evaluate the inputs into ``--out``; print the summary table."""
    from .._process import native_stderr_captured
    from ..errors import InputError
    from ..runtime import collect_images, evaluate, load_explainer
    from ..runtime.boxes import load_inputs, read_boxes
    from ..runtime.inputs import resolve_class

    if args.methods and not (args.compare_methods or args.randomize_check):
        raise InputError("--methods applies to --compare-methods and --randomize-check")
    items = collect_images(args.inputs)
    out = common.output_dir(args.out)
    if args.compare_methods or args.randomize_check:
        common.require_build_side(args.command, *_BUILD_SIDE)
        from ._evaluate_build import run_build_side

        return int(run_build_side(args, items))
    with native_stderr_captured():
        explainer = load_explainer(args.artifact)
        meta = explainer.metadata
        class_index = None
        if args.class_ is not None:
            if not meta.class_input:
                raise InputError(
                    f"--class needs an artifact exported with --class-input; {args.artifact} explains its "
                    f"top-{meta.top_k} classes"
                )
            class_index = resolve_class(args.class_, meta)
        common.status(f"reading {len(items)} images")
        images, sizes = load_inputs(items, meta)
        boxes = read_boxes(args.boxes, items, sizes, images.shape[2:]) if args.boxes else None
        evaluation = evaluate(
            explainer,
            images,
            metrics=args.metrics,
            steps=args.steps,
            baseline=args.baseline,
            batch_size=args.batch_size,
            boxes=boxes,
            class_index=class_index,
            progress=sys.stderr.isatty(),
            names=[item.key for item in items],
            pointing_tolerance=args.pointing_tolerance,
        )
    written = evaluation.write(out)
    print(evaluation.to_markdown(), end="")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
