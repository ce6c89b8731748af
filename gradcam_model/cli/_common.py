"""What the ``gradcam`` commands share: argument types, option groups declared once, output helpers.

Nothing here imports torch: ``gradcam --help`` and ``gradcam explain`` build every
parser. Build-side modules are imported inside the helpers that need them.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from .._argtypes import non_negative_float, positive_int
from ..checks.tolerances import Tolerance

__all__ = [
    "PROG",
    "FORMATS",
    "positive_int",
    "non_negative_float",
    "formats",
    "model_options",
    "input_size_option",
    "tolerance_options",
    "picture_options",
    "verbose_option",
    "add_verbose",
    "require_build_side",
    "check_alpha",
    "output_dir",
    "write_text",
    "status",
    "load_model",
    "indent",
    "runnable_command",
]

PROG = "gradcam"
_DEFAULTS = Tolerance()  # shown in --help
FORMATS = {"onnx": ("onnx", ".onnx"), "torchscript": ("torchscript", ".pt"), "ts": ("torchscript", ".pt")}
FORMATS["triton"] = ("triton", ".onnx")  # OUT/NAME/1/model.onnx + OUT/NAME/config.pbtxt (serving/triton.py)


# ---------------------------------------------------------------------------- argument types


def formats(text: str) -> tuple[str, ...]:
    """An argparse type: ``onnx``, ``torchscript`` (``ts``) or both, comma-separated."""
    chosen = []
    for part in text.split(","):
        key = part.strip().lower()
        if key not in FORMATS:
            raise argparse.ArgumentTypeError(f"unknown format {part.strip()!r}; expected onnx, torchscript, triton")
        if FORMATS[key][0] not in chosen:
            chosen.append(FORMATS[key][0])
    return tuple(chosen)


# ---------------------------------------------------------------------------- option groups (argparse parents)


def model_options(*, arch_required: bool = True) -> argparse.ArgumentParser:
    """``--arch``, ``--weights``, ``--num-classes``; optional ``--arch`` reads the artifact's (validate)."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("model")
    group.add_argument(
        "--arch",
        required=arch_required,
        metavar="NAME",
        help="torchvision architecture (resnet50...), timm:NAME, or package.module:factory"
        + ("" if arch_required else " (default: the architecture recorded in the artifact)"),
    )
    group.add_argument(
        "--weights", metavar="FILE", help="state dict or checkpoint (loaded with weights_only=True; never downloaded)"
    )
    group.add_argument(
        "--num-classes",
        type=positive_int,
        metavar="N",
        help="classifier head size (default: the architecture's"
        + (")" if arch_required else "; for validate: the artifact's)"),
    )
    return parent


def input_size_option() -> argparse.ArgumentParser:
    """``--input-size H W``: the example input the model is traced or probed with."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--input-size",
        nargs=2,
        type=positive_int,
        default=(224, 224),
        metavar=("H", "W"),
        help="example input size (default: 224 224)",
    )
    return parent


def tolerance_options() -> argparse.ArgumentParser:
    """``--cam-atol``, ``--noise-factor``, ``--logits-rtol``: parity tolerances (default: the format's)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--cam-atol",
        type=non_negative_float,
        metavar="X",
        help=f"parity tolerance on the maps (default: {_DEFAULTS.cam_atol:g})",
    )
    parent.add_argument(
        "--noise-factor",
        type=non_negative_float,
        metavar="F",
        help="also accept differences up to F times eager float32's own error vs float64, for the maps "
        f"measured with float64's ReLU masks (default: {_DEFAULTS.noise_factor:g}; 0: off)",
    )
    parent.add_argument(
        "--logits-rtol",
        type=non_negative_float,
        metavar="X",
        help=f"parity tolerance on the logits (default: {_DEFAULTS.logits_rtol:g})",
    )
    return parent


def images_run_options() -> argparse.ArgumentParser:
    """``ARTIFACT INPUT... --out DIR``, ``--class``, ``--embed``: what explain and evaluate run on and write."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("artifact", metavar="ARTIFACT", help=".onnx or .pt artifact")
    parent.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and folders")
    parent.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parent.add_argument(
        "--class",
        dest="class_",
        metavar="INDEX|NAME",
        help="class to explain (artifacts exported with --class-input; default: the top prediction)",
    )
    parent.add_argument(
        "--embed", action="store_true", help="write the pictures into report.html (one file to send; larger)"
    )
    return parent


def picture_options() -> argparse.ArgumentParser:
    """``--colormap`` and ``--alpha``: how heat maps are drawn over pictures."""
    from ..runtime.visualize import COLORMAPS

    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--colormap", default="jet", choices=COLORMAPS, metavar="NAME", help="OpenCV colormap (default: jet)"
    )
    parent.add_argument(
        "--alpha", type=non_negative_float, default=0.4, metavar="A", help="heat-map weight in [0, 1] (default: 0.4)"
    )
    return parent


def add_verbose(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """``-v``/``--verbose``, counted; only the top-level parser gives it a default (0)."""
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0 if top else argparse.SUPPRESS,
        help="show progress logs, warnings and tracebacks (-vv: debug logs)",
    )


def verbose_option() -> argparse.ArgumentParser:
    """``-v`` after the command name too (``gradcam export -v ...``)."""
    parent = argparse.ArgumentParser(add_help=False)
    add_verbose(parent, top=False)
    return parent


# ---------------------------------------------------------------------------- helpers


def require_build_side(command: str, extra: str, modules: Sequence[str]) -> None:
    """One line naming the extra when a build command runs on a serve-only install."""
    from ..errors import GradCAMError

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise GradCAMError(
            f"gradcam {command} needs {', '.join(missing)}, which this install lacks (the base install runs "
            f'artifacts only): pip install "gradcam_model{extra}"'
        )


def check_alpha(alpha: float) -> None:
    """``--alpha`` is a weight in [0, 1] (the library's check, the message naming the flag)."""
    from ..errors import InputError
    from ..runtime.visualize import check_alpha as check

    try:
        check(alpha)
    except InputError as exc:
        raise InputError(f"--{exc}") from exc


def output_dir(path: str | os.PathLike) -> Path:
    """Check that folder ``path`` exists or can be created, without creating it (no litter on failure).

    The writers create it (atomically writing each file) once there is something to write.
    """
    from ..errors import ExportError

    out = Path(path)
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        reason = "it is a file" if existing == out else f"{existing} is not a directory"
        raise ExportError(f"cannot create output folder {out}: {reason}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write to output folder {out}: {existing} is not writable")
    return out


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically, replacing an older file."""
    from .._atomic import write_bytes_atomic

    write_bytes_atomic(path, text.encode("utf-8"), overwrite=True)
    return path


def status(message: str) -> None:
    """A progress line for slow steps, on an interactive terminal only (stderr stays clean in pipes)."""
    if sys.stderr.isatty():
        print(f"{PROG}: {message}...", file=sys.stderr, flush=True)


def load_model(args: argparse.Namespace, num_classes: int | None = None):
    """The model named by ``--arch``/``--weights``; factories in the current folder import."""
    from ..models import load_model as build

    if args.arch and ":" in args.arch and not args.arch.startswith("timm:") and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: factories in the current folder import
    status(f"building {args.arch}")
    return build(args.arch, num_classes=num_classes, weights=args.weights)


def indent(text: str) -> str:
    """``text`` indented by two spaces (report tables under a heading line)."""
    return "\n".join(f"  {line}" for line in text.splitlines())


def runnable_command() -> str:
    """How to type ``gradcam`` so that a printed hint works as printed in this shell.

    ``gradcam`` when the command on PATH is this install's; else the script beside this
    interpreter (``.venv/bin/gradcam`` after ``scripts/demo.sh``, relative when under the
    current folder); else ``python -m gradcam_model``.
    """
    bin_dir = Path(sys.executable).parent
    script = bin_dir / PROG
    found = shutil.which(PROG)
    if found and script.exists() and Path(found).resolve() == script.resolve():
        return PROG
    if script.exists():
        try:
            relative = os.path.relpath(script)
        except ValueError:  # another drive (Windows)
            relative = ".."
        return str(script) if relative.startswith("..") else relative
    return f"{sys.executable} -m gradcam_model"
