"""``gradcam explain --engine ray``: the engine flags and the command, a thin layer over ``explain_dataset``."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys

from .cli._common import positive_int

__all__ = ["add_engine_arguments", "engine_of", "explain_with_ray"]

PROG = "gradcam"


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """``--engine``, ``--address``, ``--threads`` on ``gradcam explain``."""
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


def engine_of(args: argparse.Namespace) -> str:
    """``"ray"`` or ``"local"``: ``--address`` implies Ray; Ray-only flags with the local engine are an error."""
    from .errors import InputError

    if args.engine == "ray" or args.address:
        return "ray"
    if args.threads != 1:
        raise InputError("--threads applies to --engine ray only (the local engine's threads: --workers)")
    return "local"


def explain_with_ray(args: argparse.Namespace, print_predictions) -> int:
    """Run ``gradcam explain --engine ray``; the same report and exit codes as the local engine."""
    from .runtime.ray_engine import explain_dataset

    with _ray_quiet(getattr(args, "verbose", 0)):
        summary = _run(args, explain_dataset)
    print_predictions([p.row() for p in summary.predictions if not p.error])
    from .cli.explain import report_summary

    return report_summary(summary, f"on {summary.provider}")


@contextlib.contextmanager
def _ray_quiet(verbose: int):
    """Ray's start-up chatter off the terminal at the default verbosity; as it comes with ``-v``.

    Ray 2.60 writes a token-authentication notice and "Progress bars disabled" through its own
    loggers (``ray``, ``ray.data``: warnings, with handlers of their own) and a ``core_worker.cc``
    error about actor constructor arguments from native code to file descriptor 2. The loggers
    are held at ERROR and file descriptor 2 is captured (logged at debug level: ``-vv``).
    """
    if verbose:
        yield
        return
    from ._process import native_stderr_captured
    from .runtime.ray_cluster import import_ray

    with native_stderr_captured():
        import_ray()  # Ray sets its loggers' levels when imported: set ours after
        loggers = [logging.getLogger(name) for name in ("ray", "ray.data")]
        levels = [logger.level for logger in loggers]
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def _run(args: argparse.Namespace, explain_dataset):
    return explain_dataset(
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
        resume=args.resume,
        save_maps=args.save_maps,
        embed_report=args.embed,
        on_skip=lambda path, reason: print(f"{PROG}: skipped: {reason}", file=sys.stderr),
    )
