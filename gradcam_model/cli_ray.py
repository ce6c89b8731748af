"""``gradcam explain --engine ray``: the engine flags and the command, a thin layer over ``explain_dataset``."""

from __future__ import annotations

import argparse
import sys

from .cli._common import positive_int

__all__ = ["add_engine_arguments", "engine_of", "explain_with_ray"]

PROG = "gradcam"


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """``--engine``, ``--address``, ``--threads``, ``--save-maps``, ``--overwrite`` on ``gradcam explain``."""
    group = parser.add_argument_group("engine")
    group.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: threads in this process (default); ray: Ray Data actors, one ONNX Runtime session each "
        '(.onnx artifacts; pip install "gradcam_model[ray]"); --workers is then the number of actors',
    )
    group.add_argument(
        "--address",
        metavar="ADDR",
        help="--engine ray: an existing cluster (auto, ray://HOST:10001); default: start a local one on "
        "127.0.0.1 and shut it down afterwards",
    )
    group.add_argument(
        "--threads", type=positive_int, default=1, metavar="T", help="--engine ray: ONNX Runtime threads per actor"
    )
    group.add_argument(
        "--save-maps", action="store_true", help="--engine ray: also write each map as maps/<name>.npy (float32)"
    )
    group.add_argument(
        "--overwrite",
        action="store_true",
        help="--engine ray: replace the outputs of an earlier run in --out (without it: refuse)",
    )


def engine_of(args: argparse.Namespace) -> str:
    """``"ray"`` or ``"local"``: ``--address`` implies Ray; Ray-only flags with the local engine are an error."""
    from .errors import InputError

    if args.engine == "ray" or args.address:
        return "ray"
    given = [flag for flag, on in (("--threads", args.threads != 1), ("--save-maps", args.save_maps)) if on]
    if given:
        raise InputError(f"{' and '.join(given)} apply to --engine ray only")
    return "local"


def explain_with_ray(args: argparse.Namespace, print_predictions) -> int:
    """Run ``gradcam explain --engine ray``; the same report and exit codes as the local engine."""
    from .runtime.ray_engine import explain_dataset

    summary = explain_dataset(
        args.artifact,
        args.inputs,
        args.out,
        batch_size=args.batch_size,
        class_=args.class_,
        colormap=args.colormap,
        alpha=args.alpha,
        overlay_format=args.overlay_format,
        max_side=args.max_size,
        tile_size=args.tile_size,
        workers=args.workers,
        threads=args.threads,
        address=args.address,
        overwrite=args.overwrite,
        save_maps=args.save_maps,
        on_skip=lambda path, reason: print(f"{PROG}: skipped: {reason}", file=sys.stderr),
    )
    print_predictions([p.row() for p in summary.predictions if not p.error])
    wrote = [str(p) for p in (summary.overlays_dir, summary.grid) if p is not None]
    wrote += [str(summary.csv), str(summary.parquet)]
    print(
        f"explained {summary.explained} of {summary.total} images on {summary.provider} in {summary.seconds:.1f} s: "
        + ("overlays in " if summary.overlays_dir else "")
        + ", ".join(wrote)
    )
    if summary.failures:
        print(f"{PROG}: {len(summary.failures)} of {summary.total} inputs could not be explained", file=sys.stderr)
    return 1 if summary.failures else 0
