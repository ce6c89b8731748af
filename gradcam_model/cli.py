"""The ``gradcam`` command: a thin layer over the library.

Subcommands: ``layers`` (candidate target layers), ``export`` (write and validate
artifacts), ``validate`` (parity of an artifact with its model), ``explain`` (run
an artifact on image files and folders), ``demo`` (the offline end-to-end demo)
and, when installed, ``bench``. One entry point, :func:`main`, serves the console
script and ``python -m gradcam_model``.

Exit codes: 0 success; 1 the command ran but a check failed (parity) or some
inputs could not be explained; 2 a user error (bad flag, unknown architecture or
layer, unreadable file...), reported as one line on stderr (``--verbose`` adds the
traceback); 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import difflib
import importlib.util
import io
import json
import logging
import os
import sys
import time
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "build_parser"]

PROG = "gradcam"
log = logging.getLogger(__name__)

_FORMATS = {"onnx": ("onnx", ".onnx"), "torchscript": ("torchscript", ".pt"), "ts": ("torchscript", ".pt")}
_GRID_LIMIT = 64  # tiles in grid.png; predictions.csv and the overlays cover every image
_TABLE_ROWS = 20  # predictions printed to the terminal


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
    from .runtime.visualize import COLORMAPS

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Export PyTorch classifiers as Grad-CAM artifacts (ONNX, TorchScript) that return "
        "the logits and the maps from one graph; validate and run them.",
    )
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
    p.add_argument("--top-k", type=_positive_int, default=1, metavar="K", help="explain the K most likely classes")
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
    p.add_argument("--cam-atol", type=_non_negative_float, metavar="X", help="parity tolerance on the maps")
    p.add_argument(
        "--noise-factor",
        type=_non_negative_float,
        metavar="F",
        help="also accept differences up to F times eager float32's own error vs float64 (default 2; 0: off)",
    )
    p.add_argument("--logits-rtol", type=_non_negative_float, metavar="X", help="parity tolerance on the logits")
    _add_verbose(p, top=False)
    p.set_defaults(handler=_cmd_export)

    p = sub.add_parser(
        "validate",
        help="check an artifact's parity with its model",
        description="Compare an artifact's outputs with the eager reference; exit 1 beyond tolerance.",
    )
    p.add_argument("artifact", metavar="ARTIFACT", help=".onnx or .pt artifact")
    _add_model_arguments(p, arch_required=False)
    p.add_argument("--cam-atol", type=_non_negative_float, metavar="X", help="tolerance on the maps")
    p.add_argument(
        "--noise-factor",
        type=_non_negative_float,
        metavar="F",
        help="also accept differences up to F times eager float32's own error vs float64 (default 2; 0: off)",
    )
    p.add_argument("--logits-rtol", type=_non_negative_float, metavar="X", help="tolerance on the logits")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON ('-' for stdout)")
    _add_verbose(p, top=False)
    p.set_defaults(handler=_cmd_validate)

    p = sub.add_parser(
        "explain",
        help="explain images with an artifact",
        description="Run an artifact on image files and folders (recursively): an overlay PNG per image, "
        "grid.png and predictions.csv in --out. Preprocessing comes from the artifact. In folders laid out "
        "as ROOT/<class>/<image> the class folder is the true label. Exit 1 when some images failed.",
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
    p.add_argument("--colormap", default="jet", choices=COLORMAPS, metavar="NAME", help="OpenCV colormap (jet)")
    p.add_argument("--alpha", type=_non_negative_float, default=0.4, metavar="A", help="heat-map weight in [0, 1]")
    _add_verbose(p, top=False)
    p.set_defaults(handler=_cmd_explain)

    p = sub.add_parser(
        "demo",
        help="offline demo: EfficientNet-Lite0 (ImageNet) on bundled photos",
        description="Export EfficientNet-Lite0 with real ImageNet weights (no download), validate it, and "
        "explain scikit-image's photos and a cat|coffee picture through the ONNX artifact.",
    )
    p.add_argument("--out", default="gradcam-demo", metavar="DIR", help="output folder (default: gradcam-demo)")
    p.add_argument("--colormap", default="jet", choices=COLORMAPS, metavar="NAME")
    p.add_argument("--alpha", type=_non_negative_float, default=0.4, metavar="A")
    _add_verbose(p, top=False)
    p.set_defaults(handler=_cmd_demo)

    _add_bench(sub)
    return parser


def _add_bench(sub) -> None:
    """Register ``bench`` from :mod:`gradcam_model.bench` when that module is present."""
    if importlib.util.find_spec(f"{__package__}.bench") is None:
        return
    help_text = "time artifacts against pytorch-grad-cam and Captum"
    try:
        from . import bench
    except Exception as exc:  # a broken optional module must not take the other commands down
        p = sub.add_parser("bench", help=help_text, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(handler=_unavailable(f"the bench command cannot be loaded: {type(exc).__name__}: {exc}"))
        return
    p = sub.add_parser("bench", help=help_text, description=(bench.__doc__ or help_text).strip().splitlines()[0])
    bench.add_arguments(p)
    with contextlib.suppress(argparse.ArgumentError):  # bench may define its own --verbose
        _add_verbose(p, top=False)
    p.set_defaults(handler=bench.run)


def _unavailable(message: str):
    def handler(_args: argparse.Namespace) -> int:
        from .errors import GradCAMError

        raise GradCAMError(message)

    return handler


# ---------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``gradcam`` command line and return its exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help and usage errors: keep argparse's output, return its code
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    verbose = getattr(args, "verbose", 0) or 0
    from .errors import GradCAMError

    with _logging(verbose), warnings.catch_warnings():
        if not verbose:
            warnings.simplefilter("ignore")  # torch/onnx deprecation chatter; -v shows it
        try:
            return int(args.handler(args))
        except GradCAMError as exc:
            return _fail(exc, verbose)
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted", file=sys.stderr)
            return 130


def _fail(exc: BaseException, verbose: int) -> int:
    if verbose:
        traceback.print_exc(file=sys.stderr)
    message = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


@contextlib.contextmanager
def _logging(verbose: int):
    """Send the package's log records to stderr at WARNING, INFO (-v) or DEBUG (-vv), for this call only."""
    logger = logging.getLogger(__package__)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def _status(message: str) -> None:
    """A progress line for slow steps, on an interactive terminal only (stderr stays clean in pipes)."""
    if sys.stderr.isatty():
        print(f"{PROG}: {message}...", file=sys.stderr, flush=True)


class _Progress:
    """A one-line stderr progress bar, drawn only on a terminal and only for more than one item."""

    def __init__(self, total: int, label: str) -> None:
        self.total = total
        self.label = label
        self.done = 0
        self.started = time.perf_counter()
        self.enabled = total > 1 and sys.stderr.isatty()

    def __enter__(self) -> _Progress:
        self._draw()
        return self

    def update(self, n: int = 1) -> None:
        self.done += n
        self._draw()

    def _draw(self) -> None:
        if not self.enabled:
            return
        width = 30
        filled = width * self.done // max(self.total, 1)
        elapsed = time.perf_counter() - self.started
        rate = f" {self.done / elapsed:.1f}/s" if elapsed > 0 and self.done else ""
        bar = "#" * filled + "." * (width - filled)
        sys.stderr.write(f"\r{self.label} [{bar}] {self.done}/{self.total}{rate}")
        sys.stderr.flush()

    def __exit__(self, *exc) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


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
    from .export._atomic import write_bytes_atomic

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

    from .errors import GradCAMError
    from .export import export_onnx, export_torchscript
    from .export._atomic import check_target
    from .methods import get_method
    from .runtime import tolerance_for, validate
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
    from .runtime import load_explainer, tolerance_for, validate

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


def _collect_images(inputs: Sequence[str]) -> list[tuple[Path, str, str | None]]:
    """``(path, key, true label)`` per image: files as given, folders searched recursively.

    ``key`` names the outputs (unique, relative); in a folder laid out as
    ``root/<class>/.../image`` the true label is ``<class>``.
    """
    from .errors import InputError
    from .runtime.images import IMAGE_SUFFIXES

    found: list[tuple[Path, str, str | None]] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not files:
                raise InputError(f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            for file in files:
                rel = file.relative_to(path)
                label = rel.parts[0] if len(rel.parts) >= 2 else None
                found.append((file, str(Path(path.name or "input") / rel.with_suffix("")), label))
        elif path.exists():
            found.append((path, path.stem, None))
        else:
            raise InputError(f"input {path} does not exist")
    keys: dict[str, int] = {}
    unique = []
    for file, key, label in found:
        keys[key] = keys.get(key, 0) + 1
        unique.append((file, key if keys[key] == 1 else f"{key}-{keys[key]}", label))
    return unique


def _resolve_class(text: str, meta) -> int:
    from .errors import InputError

    try:
        index = int(text)
    except ValueError:
        names = list(meta.class_names or ())
        if text in names:
            return names.index(text)
        lowered = [n.lower() for n in names]
        if text.lower() in lowered:
            return lowered.index(text.lower())
        if not names:
            raise InputError(f"--class {text!r}: this artifact has no class names; give a class index") from None
        close = difflib.get_close_matches(text, names, n=3)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise InputError(f"--class {text!r} is not a class of this artifact{hint}") from None
    if not -1 <= index < meta.num_classes:
        raise InputError(f"--class {index} is out of range; expected 0..{meta.num_classes - 1} or -1 (top class)")
    return index


def _same_label(a: str, b: str) -> bool:
    def norm(s: str) -> str:
        return " ".join(s.lower().replace("_", " ").replace("-", " ").split())

    return norm(a) == norm(b)


def _cmd_explain(args: argparse.Namespace) -> int:
    import numpy as np

    from .errors import InputError
    from .runtime import load_explainer, load_image, preprocess
    from .runtime.visualize import caption, grid, overlay, save_png

    if not 0.0 <= args.alpha <= 1.0:
        raise InputError(f"--alpha must be in [0, 1], got {args.alpha}")
    explainer = load_explainer(args.artifact)
    meta = explainer.metadata
    target = None
    if args.class_ is not None:
        if not meta.class_input:
            raise InputError(
                f"--class needs an artifact exported with --class-input; {args.artifact} explains its "
                f"top-{meta.top_k} classes"
            )
        target = _resolve_class(args.class_, meta)
    images = _collect_images(args.inputs)
    out = _output_dir(args.out)

    rows: list[dict] = []
    tiles, titles, colors = [], [], []
    failures = 0
    with _Progress(len(images), "explain") as progress:
        for start in range(0, len(images), args.batch_size):
            chunk = images[start : start + args.batch_size]
            loaded = []
            for path, key, label in chunk:
                try:
                    rgb = load_image(path)
                    loaded.append((path, key, label, rgb, preprocess(rgb, meta)))
                except InputError as exc:
                    failures += 1
                    print(f"{PROG}: skipped: {exc}", file=sys.stderr)
                    rows.append({"path": str(path), "true_label": label or "", "error": str(exc)})
            if loaded:
                batch = np.stack([item[4] for item in loaded])
                result = explainer(batch, None if target is None else np.full(len(loaded), target, np.int64))
                for i, (path, key, label, rgb, _) in enumerate(loaded):
                    top = int(result.probabilities[i].argmax())
                    overlays = []
                    for k in range(result.cam.shape[1]):
                        picture = overlay(rgb, result.cam[i, k], colormap=args.colormap, alpha=args.alpha)
                        name = f"{key}.png" if k == 0 else f"{key}-top{k + 1}.png"
                        overlays.append(save_png(out / "overlays" / name, picture))
                        if k == 0 and len(tiles) < _GRID_LIMIT:
                            tiles.append(picture)
                    explained = [int(c) for c in result.class_index[i]]
                    rows.append(
                        {
                            "path": str(path),
                            "true_label": label or "",
                            "predicted_index": top,
                            "predicted_label": meta.label(top),
                            "probability": f"{float(result.probabilities[i, top]):.6f}",
                            "explained_index": ";".join(map(str, explained)),
                            "explained_label": ";".join(meta.label(c) for c in explained),
                            "explained_score": ";".join(f"{float(s):.6f}" for s in result.score[i]),
                            "overlay": ";".join(str(p) for p in overlays),
                            "error": "",
                        }
                    )
                    if len(titles) < len(tiles):
                        title = caption(meta.label(explained[0]), float(result.score[i, 0]), true_label=label)
                        if explained[0] != top:
                            title += f"\ntop-1: {meta.label(top)} {float(result.probabilities[i, top]):.2f}"
                        titles.append(f"{path.name}\n{title}")
                        colors.append(
                            None
                            if label is None
                            else (0, 140, 0)
                            if _same_label(meta.label(top), label)
                            else (200, 0, 0)
                        )
            progress.update(len(chunk))

    fields = [
        "path", "true_label", "predicted_index", "predicted_label", "probability",
        "explained_index", "explained_label", "explained_score", "overlay", "error",
    ]  # fmt: skip
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, restval="", lineterminator="\n")
    writer.writeheader()
    order = {str(path): i for i, (path, _, _) in enumerate(images)}
    writer.writerows(sorted(rows, key=lambda r: order[r["path"]]))
    csv_path = _write_text(out / "predictions.csv", buffer.getvalue())
    done = [r for r in rows if not r["error"]]
    if tiles:
        aspect = float(np.median([t.shape[0] / t.shape[1] for t in tiles]))  # cells shaped like most pictures
        tile_size = (int(np.clip(round(256 * aspect), 128, 384)), 256)
        picture = grid(tiles, titles, cols=min(4, len(tiles)), tile_size=tile_size, colors=colors)
        grid_path = save_png(out / "grid.png", picture)
    _print_predictions(done)
    print(
        f"explained {len(done)} of {len(images)} images with {meta.architecture} {meta.method} at "
        f"{meta.target_layer!r}: overlays in {out / 'overlays'}" + (f", {grid_path}" if tiles else "") + f", {csv_path}"
    )
    if failures:
        print(f"{PROG}: {failures} of {len(images)} inputs could not be explained", file=sys.stderr)
    return 1 if failures else 0


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
