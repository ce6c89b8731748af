"""``gradcam evaluate``: score an artifact's maps on images (serve side: no torch for .onnx).

``--compare-methods`` and ``--randomize-check`` need the eager model: they hand over to
the build side (:mod:`gradcam_model.checks.evaluation`, torch, through :mod:`._evaluate_build`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import _common as common

__all__ = ["register", "run"]

_BUILD_SIDE = ("[export]", ("torch", "torchvision", "onnx", "onnxscript"))


# The list flags are checked in run(), not by argparse types, so that a bad value is one line (no usage).
def _names(text: str, flag: str, allowed: Sequence[str], aliases: dict[str, tuple[str, ...]] | None = None):
    """``--metrics``/``--baselines``: names from ``allowed``, comma-separated (``none``: no baseline)."""
    from ..errors import InputError

    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    if flag == "--baselines" and chosen == ("none",):
        return ()
    expanded = tuple(n for m in chosen for n in (aliases or {}).get(m, (m,)))
    unknown = [m for m in expanded if m not in allowed]
    if unknown or not chosen:
        what = flag.lstrip("-").rstrip("s")
        raise InputError(
            f"{flag}: unknown {what} {(unknown or [text])[0]!r}; expected some of: "
            + ",".join([*allowed, *(aliases or {})])
        )
    return expanded


def _percentiles(text: str) -> tuple[float, ...]:
    """``--road-percentiles``: comma-separated, each in (0, 100)."""
    from ..errors import InputError
    from ..runtime.road import check_percentiles

    try:
        values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise InputError(
            f"--road-percentiles: expected numbers in (0, 100) separated by commas, got {text!r}"
        ) from None
    try:
        return check_percentiles(values)
    except InputError as exc:
        raise InputError(f"--road-percentiles: {exc}") from None


def register(sub, parents: Sequence[argparse.ArgumentParser]) -> None:
    """Add ``evaluate`` to the ``gradcam`` subcommands."""
    p = sub.add_parser(
        "evaluate",
        help="score an artifact's maps against baseline maps (Average Drop, deletion/insertion AUC, ROAD...)",
        description="Score an artifact's maps on image files and folders, side by side with baseline maps "
        "(smooth random, centre prior, inverted map): Average Drop and Increase in Confidence (Grad-CAM++), "
        "deletion and insertion AUC (RISE), ROAD (--metrics road) and, with --boxes, the pointing game; every "
        "perturbed image runs through the artifact in batches. Writes evaluation.csv (per image), summary.md "
        "(the table, each margin over the best baseline with a 95% interval and a verdict, how to read it), "
        "summary.json and one mean-curve and one per-image plot per curve in --out. Needs no torch for .onnx "
        "artifacts, except --compare-methods and --randomize-check (the eager model: --arch, --weights).",
        parents=[common.images_run_options(), _metric_options(), _build_side_options(),
                 common.model_options(arch_required=False), *parents],
    )  # fmt: skip
    p.set_defaults(handler=run)


def _metric_options() -> argparse.ArgumentParser:
    """The metrics, their settings and the baseline maps scored beside the method's."""
    from ..runtime.baselines import BASELINE_MAPS, RANDOM_DRAWS
    from ..runtime.evaluate import BASELINES, DEFAULT_BATCH_SIZE, DEFAULT_STEPS, METRICS, POINTING_TOLERANCE
    from ..runtime.road import DEFAULT_PERCENTILES, ROAD_NOISE

    parent = argparse.ArgumentParser(add_help=False)
    g = parent.add_argument_group("metrics")
    g.add_argument(
        "--metrics",
        metavar="M,...",
        help=f"some of {','.join(METRICS)}, or road for the three ROAD scores (default: average_drop, "
        "increase_in_confidence, deletion, insertion; pointing_game with --boxes)",
    )
    g.add_argument(
        "--baselines",
        default=",".join(BASELINE_MAPS),
        metavar="B,...|none",
        help=f"baseline maps scored beside the method's: some of {','.join(BASELINE_MAPS)}, or none (default: all)",
    )
    g.add_argument("--random-draws", type=common.positive_int, default=RANDOM_DRAWS, metavar="N",
                   help=f"draws of the random baseline per image, averaged (default: {RANDOM_DRAWS})")  # fmt: skip
    g.add_argument("--steps", type=common.positive_int, default=DEFAULT_STEPS, metavar="N",
                   help=f"deletion/insertion steps, at least 2 (default: {DEFAULT_STEPS})")  # fmt: skip
    g.add_argument(
        "--substrate",
        "--baseline",
        dest="baseline",
        choices=BASELINES,
        default="blur",
        help="what deletion/insertion put in place of pixels: blur (of the image) or mean (the dataset mean "
        "colour); default: blur (--baseline is the old name)",
    )
    percentiles = ",".join(f"{p:g}" for p in DEFAULT_PERCENTILES)
    g.add_argument("--road-percentiles", default=percentiles, metavar="P,...",
                   help=f"ROAD's percentiles, each in (0, 100) (default: {percentiles})")  # fmt: skip
    g.add_argument("--road-noise", type=common.non_negative_float, default=ROAD_NOISE, metavar="SD",
                   help=f"standard deviation of ROAD's imputation noise, normalized input units (default: "
                   f"{ROAD_NOISE:g})")  # fmt: skip
    g.add_argument("--batch-size", type=common.positive_int, default=DEFAULT_BATCH_SIZE, metavar="B",
                   help=f"images per artifact run (default: {DEFAULT_BATCH_SIZE})")  # fmt: skip
    g.add_argument("--boxes", metavar="CSV", help="object boxes for the pointing game: image,x0,y0,x1,y1 rows, "
                   "original pixels (see docs/cli.md)")  # fmt: skip
    g.add_argument("--pointing-tolerance", type=common.non_negative_float, default=POINTING_TOLERANCE, metavar="PX",
                   help=f"pointing-game tolerance in input pixels (default: {POINTING_TOLERANCE:g})")  # fmt: skip
    return parent


def _build_side_options() -> argparse.ArgumentParser:
    """``--compare-methods`` and ``--randomize-check``: checks that build artifacts from the eager model."""
    parent = argparse.ArgumentParser(add_help=False)
    g = parent.add_argument_group("build side (torch and the model: --arch, --weights)")
    g.add_argument("--target-layer", metavar="NAME",
                   help="layer for --compare-methods/--randomize-check (default: the artifact's)")  # fmt: skip
    g.add_argument("--compare-methods", action="store_true", help="score every CAM method on the same images")
    g.add_argument("--randomize-check", action="store_true",
                   help="model-randomization sanity check (Adebayo et al. 2018)")  # fmt: skip
    g.add_argument("--methods", type=_method_list, metavar="M[,M...]",
                   help="the methods --compare-methods/--randomize-check build, comma-separated (default: every "
                   "method)")  # fmt: skip
    return parent


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
    from ..runtime.boxes import image_names, load_inputs, read_boxes
    from ..runtime.inputs import resolve_class
    from ..runtime.report import write_evaluate_report

    if args.methods and not (args.compare_methods or args.randomize_check):
        raise InputError("--methods applies to --compare-methods and --randomize-check")
    options = evaluate_options(args)  # bad flags: one line before any work
    items = collect_images(args.inputs)
    out = common.output_dir(args.out)
    if args.compare_methods or args.randomize_check:
        _require_model_and_build_side(args)
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
        images, boxes = items, None
        if args.boxes:  # box coordinates need each picture's size: decode them all first
            common.status(f"reading {len(items)} images")
            images, sizes = load_inputs(items, meta)
            boxes = read_boxes(args.boxes, items, sizes, images.shape[2:], meta)
        evaluation = evaluate(
            explainer,
            images,
            names=image_names(items),
            class_index=class_index,
            progress=sys.stderr.isatty(),
            **options,
            boxes=boxes,
        )
    written = evaluation.write(out)
    pictures = dict(zip(image_names(items), (i.path for i in items), strict=True))
    written.append(write_evaluate_report(evaluation, out, pictures, embed=args.embed))
    for name, why in evaluation.errors.items():
        print(f"{name}: not scored: {why}", file=sys.stderr)
    table = evaluation.to_markdown().split("\n## How to read it")[0].rstrip()
    print(table + f"\n\nhow to read it: {out / 'summary.md'}")
    print("wrote " + ", ".join(str(p) for p in written))
    return 1 if evaluation.errors else 0


def evaluate_options(args: argparse.Namespace) -> dict:
    """``runtime.evaluate`` keywords from the ``gradcam evaluate`` flags (both sides read them here)."""
    from ..errors import InputError
    from ..runtime.baselines import BASELINE_MAPS
    from ..runtime.evaluate import METRICS, ROAD_METRICS

    if args.steps < 2:
        raise InputError(f"--steps needs at least 2 steps, got {args.steps}")
    metrics = None if args.metrics is None else _names(args.metrics, "--metrics", METRICS, {"road": ROAD_METRICS})
    return {
        "metrics": metrics,
        "steps": args.steps,
        "baseline": args.baseline,
        "batch_size": args.batch_size,
        "pointing_tolerance": args.pointing_tolerance,
        "baselines": _names(args.baselines, "--baselines", BASELINE_MAPS),
        "random_draws": args.random_draws,
        "percentiles": _percentiles(args.road_percentiles),
        "road_noise": args.road_noise,
    }


def _require_model_and_build_side(args: argparse.Namespace) -> None:
    """--compare-methods/--randomize-check need the eager model (--arch) and torch: one line naming all that is
    missing."""
    import importlib.util

    from ..errors import GradCAMError

    flag = "--compare-methods" if args.compare_methods else "--randomize-check"
    extra, modules = _BUILD_SIDE
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    needs = []
    if not args.arch:
        needs.append("--arch NAME (and --weights FILE for a torchvision or timm architecture)")
    if missing:
        needs.append(f'the build side (this install lacks {", ".join(missing)}): pip install "gradcam_model{extra}"')
    if needs:
        raise GradCAMError(
            f"{flag} rebuilds the model the artifact was exported from: it needs " + "; and ".join(needs)
        )
