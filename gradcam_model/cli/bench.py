"""``gradcam bench``: the benchmarks, one section per flag, each parsed by its own module's options.

Each section is a module with a first-line docstring, ``add_arguments(parser)`` and
``run(args) -> int``; importing it may import torch, so it is imported only when its
section runs. A new section is one line in :data:`SECTIONS`, e.g.
``("--serve", "gradcam_model.bench.serve", "a KServe server under load")``. A section
that writes a part of docs/benchmarks.md wraps it in ``<!-- NAME -->`` ... ``<!-- /NAME -->``
(:func:`gradcam_model.bench.report.update_section`); plain ``gradcam bench --markdown``
keeps such parts when it rewrites the file. The side sections share their inputs and
outputs through :mod:`gradcam_model.bench.sections`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
from collections.abc import Sequence

from . import _common as common

__all__ = ["SECTIONS", "parser_for", "register", "run"]

# (flag, module, what it times): `gradcam bench FLAG ...` runs that module's section.
# The first entry, with no flag, is what plain `gradcam bench` runs.
SECTIONS: tuple[tuple[str | None, str, str], ...] = (
    (None, "gradcam_model.bench.cli", "time artifacts against pytorch-grad-cam and Captum"),
    ("--pipeline", "gradcam_model.bench.pipeline", "the explain pipeline"),
    ("--serve", "gradcam_model.bench.serve", "the KServe server under load"),
    ("--ray", "gradcam_model.bench.ray_engine", "the Ray engine vs the local one"),
    ("--methods", "gradcam_model.bench.methods", "each CAM method's cost over logits-only inference"),
)
_NEEDS = ("[export,bench]", ("torch", "torchvision", "onnx", "onnxscript"))  # the default section's


def register(sub, parents: Sequence[argparse.ArgumentParser]) -> None:
    """Add ``bench`` to the ``gradcam`` subcommands; its own options are parsed by the chosen section."""
    summary = "; ".join([SECTIONS[0][2]] + [f"{flag}: {what}" for flag, _, what in SECTIONS[1:]])
    p = sub.add_parser("bench", help=summary, add_help=False)
    p.set_defaults(handler=None, raw_argv=run, raw_parser=parser_for)


def _section(argv: list[str]) -> tuple[str, list[str], str]:
    """The module of the section ``argv`` names, ``argv`` without its flag, and the usage's prog."""
    for flag, module, _ in SECTIONS[1:]:
        if flag in argv:
            return module, [a for a in argv if a != flag], f"{common.PROG} bench {flag}"
    return SECTIONS[0][1], argv, f"{common.PROG} bench"


def parser_for(argv: list[str]) -> tuple[argparse.ArgumentParser, object, list[str]]:
    """The parser of the section ``argv`` names (imports its module), the module, and ``argv`` without the flag."""
    name, argv, prog = _section(argv)
    module = importlib.import_module(name)
    doc = (module.__doc__ or "").strip().splitlines()[0]
    parser = argparse.ArgumentParser(prog=prog, description=doc)
    module.add_arguments(parser)
    with contextlib.suppress(argparse.ArgumentError):  # a section may define its own --verbose
        common.add_verbose(parser, top=False)
    return parser, module, argv


def run(argv: list[str], verbose: int) -> int:
    """``gradcam bench ...`` with everything after ``bench``; ``verbose`` counts the -v given before it."""
    parser, module, argv = parser_for(argv)
    builds = getattr(module, "BUILDS_ARTIFACTS", False)  # a section that exports: torch and its friends first
    if builds:
        common.require_build_side("bench", *_NEEDS)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    args.verbose = max(verbose, getattr(args, "verbose", 0) or 0)
    if not builds:
        return int(module.run(args))
    from .._torch_logs import torch_logs_at_debug

    with torch_logs_at_debug():  # torch's tracing chatter: -vv shows it
        return int(module.run(args))
