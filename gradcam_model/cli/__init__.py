"""The ``gradcam`` command: a thin layer over the library, one module per subcommand.

Subcommands: ``layers`` (candidate target layers), ``export`` (write and validate
artifacts), ``validate`` (parity of an artifact with its model), ``explain`` (run
an artifact on image files and folders), ``evaluate`` (score an artifact's maps),
``demo`` (the offline end-to-end demo) and ``bench`` (benchmarks). One entry point, :func:`main`, serves the console
script and ``python -m gradcam_model``.

Exit codes: 0 success; 1 the command ran but a check failed (parity) or some
inputs could not be explained; 2 a user error (bad flag, unknown architecture or
layer, unreadable file...), reported as one line on stderr (``--verbose`` adds the
traceback); 130 interrupted (Ctrl-C); 143 terminated (SIGTERM). Temporary files are
removed on every one of these exits.

The build commands (``layers``, ``export``, ``validate``, ``demo``, ``bench``) need torch
(``pip install "gradcam_model[export]"``); ``explain``, ``evaluate`` and ``--help`` never
import it (``evaluate --compare-methods`` and ``--randomize-check`` do).

Adding a command is one line in :data:`COMMANDS`: a module with
``register(subparsers, parents)`` that adds its subparser (``parents``: the options every
command takes) and sets ``handler=run`` (``run(args) -> int``) and, for a command that
needs the build side, ``needs=(extra, modules)``. Its module-level imports must not
import torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
import warnings
from collections.abc import Sequence

from .._process import Terminated, logging_to_stderr, sigterm_unwinds
from ._common import PROG, add_verbose, require_build_side, verbose_option

__all__ = ["COMMANDS", "main", "build_parser"]

log = logging.getLogger(__name__)

# the subcommands, in --help order: modules relative to this package, or absolute names
COMMANDS: tuple[str, ...] = (
    ".layers",
    ".export",
    ".validate",
    ".explain",
    ".evaluate",
    ".demo",
    ".bench",
    "gradcam_model.serving.cli",  # serve, triton
)


class _VersionAction(argparse.Action):
    """``--version``: the installed version, read only when asked (importlib.metadata is slow to import)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest, nargs=0, default=default, help="show the version and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        from .. import __version__

        print(f"{PROG} {__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The ``gradcam`` argument parser (subcommands and their flags)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Export PyTorch classifiers as Grad-CAM artifacts (ONNX, TorchScript) that return "
        "the logits and the maps from one graph; validate and run them.",
    )
    parser.add_argument("--version", action=_VersionAction)
    add_verbose(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    parents = [verbose_option()]
    for name in COMMANDS:
        importlib.import_module(name, __name__).register(sub, parents)
    return parser


def _command_of(argv: Sequence[str]) -> tuple[str | None, int]:
    """The subcommand named in ``argv`` (the first word after the global flags) and its position."""
    for i, arg in enumerate(argv):
        if not arg.startswith("-"):
            return arg, i
        if arg == "--":
            break
    return None, -1


def _raw_handler(parser: argparse.ArgumentParser, command: str | None):
    """The ``raw_argv`` handler of a command that parses its own arguments (``bench``), if any."""
    choices = parser._subparsers._group_actions[0].choices  # the one subparsers action
    return choices[command].get_default("raw_argv") if command in choices else None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``gradcam`` command line and return its exit code."""
    argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    command, position = _command_of(argv)
    parser = build_parser()
    raw = _raw_handler(parser, command)
    if raw is not None:
        verbose = sum(a.count("v") for a in argv[:position] if a.startswith("-v")) + argv[:position].count("--verbose")
        return _guarded(lambda: raw(argv[position + 1 :], verbose), verbose)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors: keep argparse's output, return its code
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    verbose = getattr(args, "verbose", 0) or 0

    def run() -> int:
        if not getattr(args, "needs", None):
            return int(args.handler(args))
        require_build_side(args.command, *args.needs)
        from .._torch_logs import torch_logs_at_debug

        with torch_logs_at_debug():  # torch's tracing chatter: -vv shows it
            return int(args.handler(args))

    return _guarded(run, verbose)


def _guarded(run, verbose: int) -> int:
    """Run a command: logging for this call, SIGTERM unwinding, user errors as one line."""
    from ..errors import GradCAMError

    with logging_to_stderr(verbose), warnings.catch_warnings(), sigterm_unwinds():
        if not verbose:
            warnings.simplefilter("ignore")  # torch/onnx deprecation chatter; -v shows it
        try:
            return run()
        except GradCAMError as exc:
            return _fail(exc, verbose)
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted", file=sys.stderr)
            return 130
        except Terminated:
            print(f"{PROG}: terminated", file=sys.stderr)
            return 143


def _fail(exc: BaseException, verbose: int) -> int:
    if verbose:
        traceback.print_exc(file=sys.stderr)
    text = getattr(exc, "cli_message", None) or str(exc)  # flags, not Python arguments, where they differ
    message = "; ".join(line.strip() for line in text.splitlines() if line.strip()) or type(exc).__name__
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2
