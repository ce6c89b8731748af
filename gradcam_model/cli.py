"""The ``gradcam`` command: a thin layer over the library.

Subcommands: ``layers`` (candidate target layers), ``export`` (write and validate
artifacts), ``validate`` (parity of an artifact with its model), ``explain`` (run
an artifact on image files and folders), ``demo`` (the offline end-to-end demo)
and, when installed, ``bench``. One entry point, :func:`main`, serves the console
script and ``python -m gradcam_model``.

Exit codes: 0 success; 1 the command ran but a check failed (parity) or some
inputs could not be explained; 2 a user error (bad flag, unknown architecture or
layer, unreadable file...), reported as one line on stderr (``--verbose`` adds the
traceback); 130 interrupted (Ctrl-C); 143 terminated (SIGTERM). Temporary files are
removed on every one of these exits.

The build commands (``layers``, ``export``, ``validate``, ``demo``, ``bench``) need torch
(``pip install "gradcam_model[export]"``); ``explain`` and ``--help`` never import it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import sys
import time
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path

from ._process import Terminated, logging_to_stderr, native_stderr_captured, sigterm_unwinds
from .tolerances import Tolerance

__all__ = ["main", "build_parser"]

PROG = "gradcam"
_DEFAULTS = Tolerance()  # shown in --help
_CAM_ATOL, _LOGITS_RTOL, _NOISE_FACTOR = _DEFAULTS.cam_atol, _DEFAULTS.logits_rtol, _DEFAULTS.noise_factor
log = logging.getLogger(__name__)

_FORMATS = {"onnx": ("onnx", ".onnx"), "torchscript": ("torchscript", ".pt"), "ts": ("torchscript", ".pt")}
_TABLE_ROWS = 20  # predictions printed to the terminal
# build commands and the extras they need beyond the base (serve-side) install
_NEEDS = {
    "layers": ("[export]", ("torch", "torchvision")),
    "export": ("[export]", ("torch", "torchvision", "onnx", "onnxscript")),
    "validate": ("[export]", ("torch", "torchvision")),
    "demo": ("[export,demo]", ("torch", "torchvision", "onnx", "onnxscript", "timm")),
    "bench": ("[export,bench]", ("torch", "torchvision", "onnx", "onnxscript")),
}


# ---------------------------------------------------------------------------- argument types


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}")
    return value


def _formats(text: str) -> tuple[str, ...]:
    chosen = []
    for part in text.split(","):
        key = part.strip().lower()
        if key not in _FORMATS:
            raise argparse.ArgumentTypeError(f"unknown format {part.strip()!r}; expected onnx, torchscript or both")
        if _FORMATS[key][0] not in chosen:
            chosen.append(_FORMATS[key][0])
    return tuple(chosen)


# ---------------------------------------------------------------------------- the parser


def _add_model_arguments(parser: argparse.ArgumentParser, *, arch_required: bool = True) -> None:
    group = parser.add_argument_group("model")
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
        type=_positive_int,
        metavar="N",
        help="classifier head size (default: the architecture's"
        + (")" if arch_required else "; for validate: the artifact's)"),
    )


def _add_verbose(parser: argparse.ArgumentParser, *, top: bool) -> None:
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0 if top else argparse.SUPPRESS,
        help="show progress logs, warnings and tracebacks (-vv: debug logs)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``gradcam`` argument parser (subcommands and their flags)."""
    from .cli_ray import add_engine_arguments
    from .runtime.images import DEFAULT_MAX_SIDE
    from .runtime.pipeline import DEFAULT_TILE_SIZE
    from .runtime.visualize import COLORMAPS, OVERLAY_FORMATS

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Export PyTorch classifiers as Grad-CAM artifacts (ONNX, TorchScript) that return "
        "the logits and the maps from one graph; validate and run them.",
    )
    parser.add_argument("--version", action=_VersionAction)
    _add_verbose(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("layers", help="list candidate target layers", description="List candidate target layers.")
    _add_model_arguments(p)
    p.add_argument(
        "--input-size",
        nargs=2,
        type=_positive_int,
        default=(224, 224),
        metavar=("H", "W"),
        help="example input size (default: 224 224)",
    )
    _add_verbose(p, top=False)
    p.set_defaults(handler=_cmd_layers)

    p = sub.add_parser(
        "export",
        help="export a Grad-CAM artifact and check its parity",
        description="Build the Grad-CAM graph, write ONNX and/or TorchScript artifacts to --out, validate "
        "each against the eager model and write parity.json. Exit 1 when parity fails.",
    )
    _add_model_arguments(p)
    p.add_argument("--class-names", metavar="FILE", help="class names: one per line, or a JSON list")
    p.add_argument("--target-layer", default="auto", metavar="NAME", help="dotted module name or 'auto' (default)")
    p.add_argument("--method", default="gradcam", metavar="M", help="gradcam (default), gradcam++, xgradcam, ...")
    p.add_argument(
        "--input-size",
        nargs=2,
        type=_positive_int,
        default=(224, 224),
        metavar=("H", "W"),
        help="example input size (default: 224 224)",
    )
    p.add_argument(
        "--top-k", type=_positive_int, default=1, metavar="K", help="explain the K most likely classes (default: 1)"
    )
    p.add_argument("--class-input", action="store_true", help="take the class to explain as an input (-1: top class)")
    p.add_argument(
        "--format",
        type=_formats,
        default=("onnx", "torchscript"),
        metavar="F",
        help="onnx, torchscript, or both comma-separated (default: onnx,torchscript)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--name", metavar="STEM", help="artifact file name without suffix (default: from --arch)")
    p.add_argument("--overwrite", action="store_true", help="replace existing artifacts")
    p.add_argument("--mean", nargs="+", type=float, metavar="M", help="per-channel mean (default: ImageNet)")
    p.add_argument("--std", nargs="+", type=float, metavar="S", help="per-channel std (default: ImageNet)")
    p.add_argument(
        "--cam-atol",
        type=_non_negative_float,
        metavar="X",
        help=f"parity tolerance on the maps (default: {_CAM_ATOL:g})",
    )
    p.add_argument(
        "--noise-factor",
        type=_non_negative_float,
        metavar="F",
        help="also accept differences up to F times eager float32's own error vs float64 "
        f"(default: {_NOISE_FACTOR:g}; 0: off)",
    )
    p.add_argument(
        "--logits-rtol",
        type=_non_negative_float,
        metavar="X",
        help=f"parity tolerance on the logits (default: {_LOGITS_RTOL:g})",
    )
    _add_verbose(p, top=False)
    p.set_defaults(handler=_cmd_export)

    p = sub.add_parser(
        "validate",
        help="check an artifact's parity with its model",
        description="Compare an artifact's outputs with the eager reference; exit 1 beyond tolerance.",
    )
    p.add_argument("artifact", metavar="ARTIFACT", help=".onnx or .pt artifact")
    _add_model_arguments(p, arch_required=False)
    p.add_argument(
        "--cam-atol", type=_non_negative_float, metavar="X", help=f"tolerance on the maps (default: {_CAM_ATOL:g})"
    )
    p.add_argument(
        "--noise-factor",
        type=_non_negative_float,
        metavar="F",
        help="also accept differences up to F times eager float32's own error vs float64 "
        f"(default: {_NOISE_FACTOR:g}; 0: off)",
    )
    p.add_argument(
        "--logits-rtol",
        type=_non_negative_float,
        metavar="X",
        help=f"tolerance on the logits (default: {_LOGITS_RTOL:g})",
    )
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON ('-' for stdout)")
    _add_verbose(p, top=False)
    p.set_defaults(handler=_cmd_validate)

    p = sub.add_parser(
        "explain",
        help="explain images with an artifact",
        description="Run an artifact on image files and folders (recursively): an overlay per image "
        "(JPEG by default), grid.png and predictions.csv in --out. Preprocessing comes from the artifact. In "
        "folders laid out as ROOT/<class>/<image> the class folder is the true label. Needs no torch for .onnx "
        "artifacts. Exit 1 when some images failed.",
    )
    p.add_argument("artifact", metavar="ARTIFACT", help=".onnx or .pt artifact")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and folders")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--class",
        dest="class_",
        metavar="INDEX|NAME",
        help="class to explain (artifacts exported with --class-input; default: the top prediction)",
    )
    p.add_argument("--batch-size", type=_positive_int, default=8, metavar="B", help="images per run (default: 8)")
    p.add_argument(
        "--colormap", default="jet", choices=COLORMAPS, metavar="NAME", help="OpenCV colormap (default: jet)"
    )
    p.add_argument(
        "--alpha", type=_non_negative_float, default=0.4, metavar="A", help="heat-map weight in [0, 1] (default: 0.4)"
    )
    p.add_argument(
        "--overlay-format",
        default="jpg",
        choices=OVERLAY_FORMATS,
        help="overlay files: jpg (default, fast) or png (lossless, ~10x slower to encode)",
    )
    p.add_argument(
        "--max-size",
        type=_positive_int,
        default=DEFAULT_MAX_SIDE,
        metavar="PX",
        help=f"decode larger pictures reduced to this long side; also the overlays' largest side "
        f"(default: {DEFAULT_MAX_SIDE})",
    )
    p.add_argument(
        "--tile-size",
        type=_positive_int,
        default=DEFAULT_TILE_SIZE,
        metavar="PX",
        help=f"width of a grid.png cell (default: {DEFAULT_TILE_SIZE})",
    )
    p.add_argument("--workers", type=_positive_int, default=2, metavar="N", help="decode/encode threads (default: 2)")
    add_engine_arguments(p)  # --engine ray (cli_ray.py)
    _add_verbose(p, top=False)
    p.set_defaults(handler=_cmd_explain)

    p = sub.add_parser(
        "demo",
        help="offline demo: EfficientNet-Lite0 (ImageNet) on bundled photos",
        description="Export EfficientNet-Lite0 with real ImageNet weights (no download), validate it, and "
        "explain scikit-image's photos and a cat|coffee picture through the ONNX artifact.",
    )
    p.add_argument("--out", default="gradcam-demo", metavar="DIR", help="output folder (default: gradcam-demo)")
    p.add_argument(
        "--colormap", default="jet", choices=COLORMAPS, metavar="NAME", help="OpenCV colormap (default: jet)"
    )
    p.add_argument(
        "--alpha", type=_non_negative_float, default=0.4, metavar="A", help="heat-map weight in [0, 1] (default: 0.4)"
    )
    _add_verbose(p, top=False)
    p.set_defaults(handler=_cmd_demo)

    _add_bench(sub)
    return parser


def _add_bench(sub) -> None:
    """List ``bench`` (its module imports torch, so its own parser is built only when it runs)."""
    if importlib.util.find_spec(f"{__package__}.bench") is None:
        return
    p = sub.add_parser(
        "bench",
        help="time artifacts against pytorch-grad-cam and Captum; --pipeline: the explain pipeline",
        add_help=False,
    )
    p.set_defaults(handler=None)


def _run_bench(argv: list[str], verbose: int) -> int:
    """``gradcam bench ...``: parsed by the bench modules' own parsers."""
    if "--pipeline" in argv:
        from . import bench_pipeline as module

        argv = [a for a in argv if a != "--pipeline"]
        prog = f"{PROG} bench --pipeline"
    elif "--ray" in argv:
        from . import bench_ray as module

        argv = [a for a in argv if a != "--ray"]
        prog = f"{PROG} bench --ray"
    else:
        _require_build_side("bench")
        from . import bench as module

        prog = f"{PROG} bench"
    doc = (module.__doc__ or "").strip().splitlines()[0]
    parser = argparse.ArgumentParser(prog=prog, description=doc)
    module.add_arguments(parser)
    with contextlib.suppress(argparse.ArgumentError):  # bench may define its own --verbose
        _add_verbose(parser, top=False)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    args.verbose = max(verbose, getattr(args, "verbose", 0) or 0)
    return int(module.run(args))


class _VersionAction(argparse.Action):
    """``--version``: the installed version, read only when asked (importlib.metadata is slow to import)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest, nargs=0, default=default, help="show the version and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        from . import __version__

        print(f"{PROG} {__version__}")
        parser.exit()


def _require_build_side(command: str) -> None:
    """One line naming the extra when a build command runs on a serve-only install."""
    from .errors import GradCAMError

    extra, modules = _NEEDS[command]
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise GradCAMError(
            f"gradcam {command} needs {', '.join(missing)}, which this install lacks (the base install runs "
            f'artifacts only): pip install "gradcam_model{extra}"'
        )


# ---------------------------------------------------------------------------- main


def _command_of(argv: Sequence[str]) -> tuple[str | None, int]:
    """The subcommand named in ``argv`` (the first word after the global flags) and its position."""
    for i, arg in enumerate(argv):
        if not arg.startswith("-"):
            return arg, i
        if arg == "--":
            break
    return None, -1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``gradcam`` command line and return its exit code."""
    argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    command, position = _command_of(argv)
    parser = build_parser()
    if command == "bench" and "bench" in parser._subparsers._group_actions[0].choices:
        verbose = sum(a.count("v") for a in argv[:position] if a.startswith("-v")) + argv[:position].count("--verbose")
        return _guarded(lambda: _run_bench(argv[position + 1 :], verbose), verbose)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors: keep argparse's output, return its code
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    verbose = getattr(args, "verbose", 0) or 0

    def run() -> int:
        if args.command in _NEEDS:
            _require_build_side(args.command)
        return int(args.handler(args))

    return _guarded(run, verbose)


def _guarded(run, verbose: int) -> int:
    """Run a command: logging for this call, SIGTERM unwinding, user errors as one line."""
    from .errors import GradCAMError

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
    message = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def _status(message: str) -> None:
    """A progress line for slow steps, on an interactive terminal only (stderr stays clean in pipes)."""
    if sys.stderr.isatty():
        print(f"{PROG}: {message}...", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- helpers


def _output_dir(path: str | os.PathLike) -> Path:
    """Check that folder ``path`` exists or can be created, without creating it (no litter on failure).

    The writers create it (atomically writing each file) once there is something to write.
    """
    from .errors import ExportError

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


def _write_text(path: Path, text: str) -> Path:
    from ._atomic import write_bytes_atomic

    write_bytes_atomic(path, text.encode("utf-8"), overwrite=True)
    return path


def _load_model(args: argparse.Namespace, num_classes: int | None = None):
    from .models import load_model

    if args.arch and ":" in args.arch and not args.arch.startswith("timm:") and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: factories in the current folder import
    _status(f"building {args.arch}")
    return load_model(args.arch, num_classes=num_classes, weights=args.weights)


def _read_class_names(path: str) -> list[str]:
    from .errors import InputError

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise InputError(f"cannot read class names from {path}: {reason}") from exc
    if text.lstrip().startswith("["):
        try:
            names = json.loads(text)
        except ValueError as exc:
            raise InputError(f"{path} starts like a JSON list but is not valid JSON: {exc}") from exc
        if not isinstance(names, list) or not all(isinstance(n, (str, int)) for n in names):
            raise InputError(f"{path}: expected a JSON list of class names")
        return [str(n) for n in names]
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise InputError(f"{path} holds no class names; expected one per line or a JSON list")
    return names


def _stem(arch: str) -> str:
    name = arch.split(":", 1)[1] if ":" in arch else arch
    name = name.rsplit(".", 1)[-1].rsplit("/", 1)[-1]
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "model"


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape[1:])


def _parity_document(reports) -> str:
    return json.dumps({"ok": all(r.ok for r in reports), "artifacts": [r.to_dict() for r in reports]}, indent=2) + "\n"


# ---------------------------------------------------------------------------- layers


def _cmd_layers(args: argparse.Namespace) -> int:
    import torch

    from .layers import list_layers

    model = _load_model(args, args.num_classes)
    example = torch.randn(1, 3, *args.input_size, generator=torch.Generator().manual_seed(0))
    infos = list_layers(model, example)
    if not infos:
        print(f"{args.arch} has no layer with a 4-D [N, C, h, w] output at {args.input_size[0]}x{args.input_size[1]}")
        return 0
    width = max(len("name"), *(len(i.name) for i in infos)) + 2
    type_width = max(len("type"), *(len(i.type) for i in infos)) + 2
    print(f"  {'name':<{width}}{'type':<{type_width}}{'output (C x h x w)':<20}{'calls':>5}  reaches logits  note")
    for info in infos:
        mark = "*" if info.auto else " "
        note = "NOT a [C, h, w] map: refused" if info.grid else "returns its input" if info.passthrough else ""
        print(
            f"{mark} {info.name:<{width}}{info.type:<{type_width}}{_shape_text(info.output_shape):<20}"
            f"{info.calls:>5}  {'yes' if info.influences_logits else 'no':<14}  {note}".rstrip()
        )
    if any(info.grid for info in infos):
        print(
            "layers marked NOT a [C, h, w] map are channels-last or token tensors (transformers): "
            "they cannot be explained yet"
        )
    auto = next((i.name for i in infos if i.auto), None)
    if auto:
        print(f"* auto: --target-layer auto picks {auto!r} (the last spatial map on the path to the logits)")
    else:
        print("no automatic choice at this input size; pass --target-layer NAME")
    return 0


# ---------------------------------------------------------------------------- export


def _cmd_export(args: argparse.Namespace) -> int:
    import torch

    from ._atomic import check_target
    from .errors import GradCAMError
    from .export import export_onnx, export_torchscript
    from .methods import get_method
    from .parity import tolerance_for, validate
    from .wrapper import IMAGENET_MEAN, IMAGENET_STD, GradCAMModel

    method = get_method(args.method).name  # fail fast, before building anything
    if args.class_input and args.top_k != 1:
        raise GradCAMError("--class-input explains one given class; drop --top-k or use --top-k 1")
    out = _output_dir(args.out)
    stem = args.name or _stem(args.arch)
    targets = {fmt: out / f"{stem}{_FORMATS[fmt][1]}" for fmt in args.format}
    for path in targets.values():
        check_target(path, overwrite=args.overwrite)
    class_names = _read_class_names(args.class_names) if args.class_names else None
    model = _load_model(args, args.num_classes)
    example = torch.randn(1, 3, *args.input_size, generator=torch.Generator().manual_seed(0))
    _status(f"building the Grad-CAM graph at {args.target_layer!r}")
    wrapper = GradCAMModel(
        model,
        args.target_layer,
        method=method,
        example_input=example,
        top_k=args.top_k,
        class_input=args.class_input,
        class_names=class_names,
        mean=args.mean or IMAGENET_MEAN,
        std=args.std or IMAGENET_STD,
        architecture=args.arch,
    )
    explains = "class input" if wrapper.class_input else f"top-{wrapper.top_k}"
    size = "dynamic" if wrapper.dynamic_spatial else "fixed {}x{}".format(*wrapper.input_size)
    print(
        f"built {args.arch} {wrapper.method} at {wrapper.target_layer!r}: {wrapper.num_classes} classes, "
        f"{explains}, {size} input size ({wrapper.build_seconds:.1f} s)"
    )
    exporters = {"onnx": export_onnx, "torchscript": export_torchscript}
    reports = []
    for fmt, path in targets.items():
        _status(f"exporting {fmt}")
        started = time.perf_counter()
        exporters[fmt](wrapper, path, overwrite=args.overwrite)
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - started:.1f} s)")
        _status(f"validating {path.name}")
        tolerance = tolerance_for(
            fmt, cam_atol=args.cam_atol, logits_rtol=args.logits_rtol, noise_factor=args.noise_factor
        )
        report = validate(path, model, tolerance=tolerance)
        reports.append(report)
        print(f"parity of {path.name}: {'ok' if report.ok else 'FAILED'}")
        print(_indent(report.table()))
    report_path = _write_text(out / "parity.json", _parity_document(reports))
    print(f"wrote {report_path}")
    failed = [r for r in reports if not r.ok]
    for r in failed:
        print(f"{PROG}: parity check failed for {r.artifact}: {'; '.join(r.failures())}", file=sys.stderr)
    return 1 if failed else 0


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines())


# ---------------------------------------------------------------------------- validate


def _cmd_validate(args: argparse.Namespace) -> int:
    import torch

    from ._state import eval_state
    from .errors import ArchitectureError, GradCAMError
    from .parity import tolerance_for, validate
    from .runtime import load_explainer

    explainer = load_explainer(args.artifact, device="cpu")
    meta = explainer.metadata
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
        model = _load_model(args, num_classes=num_classes)
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
    _status(f"validating {args.artifact}")
    tolerance = tolerance_for(
        meta.format, cam_atol=args.cam_atol, logits_rtol=args.logits_rtol, noise_factor=args.noise_factor
    )
    report = validate(explainer, model, tolerance=tolerance)
    print(f"parity of {args.artifact} ({meta.format}, {meta.architecture} {meta.method} at {meta.target_layer!r}):")
    print(_indent(report.table()))
    print("ok" if report.ok else "FAILED: " + "; ".join(report.failures()))
    if args.json == "-":
        print(json.dumps(report.to_dict(), indent=2))
    elif args.json:
        _write_text(Path(args.json), json.dumps(report.to_dict(), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0 if report.ok else 1


# ---------------------------------------------------------------------------- explain


def _cmd_explain(args: argparse.Namespace) -> int:
    from .errors import InputError
    from .runtime import explain_files, load_explainer

    if not 0.0 <= args.alpha <= 1.0:
        raise InputError(f"--alpha must be in [0, 1], got {args.alpha}")
    from .cli_ray import engine_of, explain_with_ray

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
        from .runtime.inputs import collect_images

        items = collect_images(args.inputs)
        out = _output_dir(args.out)
        try:
            summary = explain_files(
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
                on_skip=lambda item, reason: print(f"{PROG}: skipped: {reason}", file=sys.stderr),
            )
        except InputError as exc:
            if args.class_ is not None and str(exc).startswith("class "):
                raise InputError(f"--{exc}") from exc  # name the flag the user typed
            raise
    done = [p.row() for p in summary.predictions if not p.error]
    _print_predictions(done)
    wrote = [str(p) for p in (summary.overlays_dir, summary.grid) if p is not None] + [str(summary.csv)]
    print(
        f"explained {summary.explained} of {summary.total} images with {meta.architecture} {meta.method} at "
        f"{meta.target_layer!r} on {summary.provider} in {summary.seconds:.1f} s: "
        + ("overlays in " if summary.overlays_dir else "")
        + ", ".join(wrote)
    )
    if summary.failures:
        print(f"{PROG}: {len(summary.failures)} of {summary.total} inputs could not be explained", file=sys.stderr)
    return 1 if summary.failures else 0


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


# ---------------------------------------------------------------------------- demo


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    from .errors import InputError

    if not 0.0 <= args.alpha <= 1.0:
        raise InputError(f"--alpha must be in [0, 1], got {args.alpha}")
    out = _output_dir(args.out)
    result = run_demo(out, colormap=args.colormap, alpha=args.alpha, on_step=_status)
    print(result.table())
    print()
    print(f"artifacts: {', '.join(str(p) for p in result.artifacts.values())}")
    print(f"parity report: {result.report}")
    print(f"overlays: {out / 'overlays'}; grid: {result.grid}")
    print(f"try: gradcam explain {result.artifacts['onnx']} {out / 'photos'} --out {out / 'explain'}")
    print(f"done in {result.seconds:.0f} s")
    return 0 if result.ok else 1
