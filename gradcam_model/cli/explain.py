"""``gradcam explain``: run an artifact on image files and folders (serve side: no torch for .onnx)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import _common as common

__all__ = ["register", "run"]

_TABLE_ROWS = 20  # predictions printed to the terminal


def register(sub, parents: Sequence[argparse.ArgumentParser]) -> None:
    """Add ``explain`` to the ``gradcam`` subcommands."""
    from ..runtime.images import DEFAULT_MAX_SIDE
    from ..runtime.pipeline import DEFAULT_TILE_SIZE
    from ..runtime.visualize import OVERLAY_FORMATS

    p = sub.add_parser(
        "explain",
        help="explain images with an artifact",
        description="Run an artifact on image files and folders (recursively): an overlay per image "
        "(JPEG by default), grid.png and predictions.csv in --out. Preprocessing comes from the artifact. In "
        "folders laid out as ROOT/<class>/<image> the class folder is the true label. Needs no torch for .onnx "
        "artifacts. Exit 1 when some images failed.",
        parents=[common.images_run_options(), common.picture_options(), *parents],
    )
    p.add_argument("--batch-size", type=common.positive_int, default=8, metavar="B", help="images per run (default: 8)")
    p.add_argument(
        "--overlay-format",
        default="jpg",
        choices=OVERLAY_FORMATS,
        help="overlay files: jpg (default, fast) or png (lossless, ~10x slower to encode)",
    )
    p.add_argument(
        "--max-size",
        type=common.positive_int,
        default=DEFAULT_MAX_SIDE,
        metavar="PX",
        help=f"decode larger pictures reduced to this long side; also the overlays' largest side "
        f"(default: {DEFAULT_MAX_SIDE})",
    )
    p.add_argument(
        "--tile-size",
        type=common.positive_int,
        default=DEFAULT_TILE_SIZE,
        metavar="PX",
        help=f"width of a grid.png cell (default: {DEFAULT_TILE_SIZE})",
    )
    p.add_argument(
        "--workers", type=common.positive_int, default=2, metavar="N", help="decode/encode threads (default: 2)"
    )
    group = p.add_argument_group("outputs of an earlier run in --out (both engines)")
    group.add_argument("--save-maps", action="store_true", help="also write each map as maps/<name>.npy (float32)")
    again = group.add_mutually_exclusive_group()
    again.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the outputs of an earlier run in --out (without it, or --resume: refuse)",
    )
    again.add_argument(
        "--resume",
        action="store_true",
        help="continue a run stopped by SIGTERM or Ctrl-C: same artifact, inputs and options; the images it "
        "finished are skipped",
    )
    from ..cli_ray import add_engine_arguments

    add_engine_arguments(p)  # --engine ray, --address, --threads (cli_ray.py)
    p.set_defaults(handler=run)


def _explain(args: argparse.Namespace, explainer):
    """``explain_files`` with the flags; a bad class is reported under the flag the user typed."""
    from ..errors import InputError
    from ..runtime import explain_files
    from ..runtime.inputs import collect_images

    items = collect_images(args.inputs)
    out = common.output_dir(args.out)
    try:
        return explain_files(
            explainer,
            items,
            out,
            batch_size=args.batch_size,
            class_=args.class_,
            colormap=args.colormap,
            alpha=args.alpha,
            overlay_format=args.overlay_format,
            workers=args.workers,
            max_side=args.max_size,
            tile_size=args.tile_size,
            on_skip=lambda item, reason: print(f"{common.PROG}: skipped: {reason}", file=sys.stderr),
            save_maps=args.save_maps,
            overwrite=args.overwrite,
            resume=args.resume,
            embed_report=args.embed,
        )
    except InputError as exc:
        if args.class_ is not None and str(exc).startswith("class "):
            raise InputError(f"--{exc}") from exc  # name the flag the user typed
        raise


def run(args: argparse.Namespace) -> int:
    """Explain the inputs into ``--out``; print the predictions; 1 when some inputs failed."""
    from .._process import native_stderr_captured
    from ..errors import InputError
    from ..runtime import load_explainer

    common.check_alpha(args.alpha)
    from ..cli_ray import engine_of, explain_with_ray

    try:
        if engine_of(args) == "ray":
            return explain_with_ray(args, _print_predictions)
        with native_stderr_captured():
            explainer = load_explainer(args.artifact)
            meta = explainer.metadata
            if args.class_ is not None and not meta.class_input:
                raise InputError(
                    f"--class needs an artifact exported with --class-input; {args.artifact} explains its "
                    f"top-{meta.top_k} classes"
                )
            summary = _explain(args, explainer)
    except BaseException as exc:
        if not isinstance(exc, Exception):  # SIGTERM, Ctrl-C: say what was kept
            report_interrupted(args.out)
        raise
    _print_predictions([p.row() for p in summary.predictions if not p.error])
    how = f"with {meta.architecture} {meta.method} at {meta.target_layer!r} on {summary.provider}"
    return report_summary(summary, how)


def report_summary(summary, how: str) -> int:
    """The closing line of ``gradcam explain`` (both engines); 1 when some inputs failed."""
    wrote = []
    if summary.overlays_dir is not None:
        wrote.append(f"overlays in {summary.overlays_dir}")
    if summary.grid is not None:
        shown = summary.grid_tiles
        part = f"the first {shown} of {summary.explained} pictures" if shown < summary.explained else "every picture"
        wrote.append(f"{summary.grid} ({part})")
    wrote += [str(p) for p in (summary.csv, summary.parquet, summary.report) if p is not None]
    resumed = f" ({summary.resumed} done by the interrupted run)" if summary.resumed else ""
    print(f"explained {summary.explained} of {summary.total} images{resumed} {how} in {summary.seconds:.1f} s: "
          + ", ".join(wrote))  # fmt: skip
    if summary.failures:
        print(
            f"{common.PROG}: {len(summary.failures)} of {summary.total} inputs could not be explained", file=sys.stderr
        )
    return 1 if summary.failures else 0


def report_interrupted(out: str) -> None:
    """After SIGTERM or Ctrl-C: how many images are done and how to continue (nothing when no run started)."""
    from pathlib import Path

    from ..runtime.journal import PARTIAL_CSV, partial_rows

    try:
        done, _ = partial_rows(out)
    except (OSError, ValueError):
        return
    if (Path(out) / PARTIAL_CSV).exists():
        print(
            f"{common.PROG}: stopped with {len(done)} images done (their overlays, and their rows in "
            f"{Path(out) / PARTIAL_CSV}); add --resume to the same command to continue",
            file=sys.stderr,
        )


def _print_predictions(rows: list[dict]) -> None:
    if not rows:
        return
    shown = rows[:_TABLE_ROWS]
    width = min(48, max(len("image"), *(len(r["path"]) for r in shown))) + 2
    chosen = any(r["explained_index"] != str(r["predicted_index"]) for r in rows)  # --class or top-k
    extra = f"{'explained':<28}" if chosen else ""
    print(f"{'image':<{width}}{'predicted':<28}{'probability':>11}  {extra}true")
    for r in shown:
        path = r["path"] if len(r["path"]) <= width - 2 else "..." + r["path"][-(width - 5) :]
        extra = f"{r['explained_label'][:27]:<28}" if chosen else ""
        label = r["predicted_label"][:27]
        print(f"{path:<{width}}{label:<28}{float(r['probability']):>11.3f}  {extra}{r['true_label']}")
    if len(rows) > len(shown):
        print(f"... {len(rows) - len(shown)} more in predictions.csv")
