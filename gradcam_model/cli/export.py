"""``gradcam export``: build the Grad-CAM graph, write the artifacts, validate them, write parity.json."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ..contract import INTERPOLATIONS, RESIZE_MODES
from . import _common as common
from ._progress import stage

__all__ = ["register", "run"]


def register(sub, parents: Sequence[argparse.ArgumentParser]) -> None:
    """Add ``export`` to the ``gradcam`` subcommands."""
    p = sub.add_parser(
        "export",
        help="export a Grad-CAM artifact and check its parity",
        description="Build the Grad-CAM graph, write ONNX and/or TorchScript artifacts to --out, validate "
        "each against the eager model and write parity.json. Exit 1 when parity fails.",
        parents=[common.model_options(), common.input_size_option(), common.tolerance_options(), *parents],
    )
    p.add_argument("--class-names", metavar="FILE", help="class names: one per line, or a JSON list")
    p.add_argument("--target-layer", default="auto", metavar="NAME", help="dotted module name or 'auto' (default)")
    p.add_argument(
        "--method",
        default="gradcam",
        metavar="M",
        help="gradcam (default), gradcam++, xgradcam, hirescam, layercam, gradcam-elementwise, cam, eigencam, "
        "eigengradcam, randomcam, finercam, ablationcam, fullgrad, guided-backprop, guided-gradcam; "
        "METHOD+eigen-smooth and METHOD+aug-smooth smooth as pytorch-grad-cam's eigen_smooth and aug_smooth; "
        "randomcam+seed-N; fullgrad and guided-backprop read no target layer (--target-layer is ignored)",
    )
    p.add_argument(
        "--top-k",
        type=common.positive_int,
        default=1,
        metavar="K",
        help="explain the K most likely classes (default: 1)",
    )
    p.add_argument("--class-input", action="store_true", help="take the class to explain as an input (-1: top class)")
    p.add_argument(
        "--format",
        type=common.formats,
        default=("onnx", "torchscript"),
        metavar="F",
        help="onnx, torchscript, triton (a Triton model repository), comma-separated (default: onnx,torchscript)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--name", metavar="STEM", help="artifact file name without suffix (default: from --arch)")
    p.add_argument("--overwrite", action="store_true", help="replace existing artifacts")
    p.add_argument("--mean", nargs="+", type=float, metavar="M", help="per-channel mean (default: ImageNet)")
    p.add_argument("--std", nargs="+", type=float, metavar="S", help="per-channel std (default: ImageNet)")
    prep = p.add_argument_group(
        "preprocessing",
        "how pictures become inputs, recorded in the artifact (default: the model's own eval transform: "
        "torchvision's weights transforms for --arch NAME, timm's pretrained_cfg for timm:NAME; else a stretch)",
    )
    prep.add_argument("--resize", choices=RESIZE_MODES, help="stretch (aspect ratio not kept) or shorter (then crop)")
    prep.add_argument("--resize-size", type=common.positive_int, metavar="N", help="shorter side length (with shorter)")
    prep.add_argument("--crop-pct", type=_crop_pct, metavar="F", help="centre crop fraction in (0, 1] (timm)")
    prep.add_argument("--interpolation", choices=INTERPOLATIONS, help="resampling (default: the model's)")
    prep.add_argument("--no-antialias", action="store_true", help="do not widen the filter when shrinking")
    p.set_defaults(handler=run, needs=("[export]", ("torch", "torchvision", "onnx", "onnxscript")))


def _read_class_names(path: str) -> list[str]:
    import json

    from ..errors import InputError

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


def _crop_pct(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def _preprocessing(args: argparse.Namespace, model):
    """The model's own preprocessing (or the default), with the flags' fields replaced."""
    from ..preprocessing import resolve, torchvision_default, with_overrides

    size = tuple(args.input_size)
    resolved = resolve(model, torchvision_default(args.arch) if ":" not in args.arch else None, size)
    return with_overrides(
        resolved,
        size,
        resize=args.resize,
        resize_size=args.resize_size,
        crop_pct=args.crop_pct,
        interpolation=args.interpolation,
        antialias=False if args.no_antialias else None,
    )


def _stem(arch: str) -> str:
    name = arch.split(":", 1)[1] if ":" in arch else arch
    name = name.rsplit(".", 1)[-1].rsplit("/", 1)[-1]
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "model"


def _targets(args: argparse.Namespace) -> tuple[Path, dict[str, Path]]:
    """The output folder and one artifact path per format, checked before anything is built."""
    from .._atomic import check_target

    out = common.output_dir(args.out)
    stem = args.name or _stem(args.arch)
    targets = {
        fmt: out / stem / "1" / "model.onnx" if fmt == "triton" else out / f"{stem}{common.FORMATS[fmt][1]}"
        for fmt in args.format
    }
    for path in targets.values():
        check_target(path, overwrite=args.overwrite)
    return out, targets


def _build(args: argparse.Namespace, model, method: str, class_names):
    """The ``GradCAMModel`` the flags describe; prints a one-line summary."""
    import torch

    from ..graph.wrapper import GradCAMModel

    example = torch.randn(1, 3, *args.input_size, generator=torch.Generator().manual_seed(0))
    prep = _preprocessing(args, model)
    with stage(f"building the Grad-CAM graph at {args.target_layer!r}", verbose=args.verbose):
        wrapper = GradCAMModel(
            model,
            args.target_layer,
            method=method,
            example_input=example,
            top_k=args.top_k,
            class_input=args.class_input,
            class_names=class_names,
            mean=args.mean or prep.mean,
            std=args.std or prep.std,
            architecture=args.arch,
            preprocess=prep.preprocessing,
        )
    explains = "class input" if wrapper.class_input else f"top-{wrapper.top_k}"
    size = "dynamic" if wrapper.dynamic_spatial else "fixed {}x{}".format(*wrapper.input_size)
    print(
        f"built {args.arch} {wrapper.method} at {wrapper.target_layer or 'the input (no target layer)'!r}: "
        f"{wrapper.num_classes} classes, "
        f"{explains}, {size} input size ({wrapper.build_seconds:.1f} s)"
    )
    if wrapper.fixed_size_reason:
        print("height/width fixed at {}x{}: {}".format(*wrapper.input_size, wrapper.fixed_size_reason))
    how = prep.source if prep.source != "the default" else "the default: none stated; see --resize, --crop-pct"
    print(f"preprocessing: {prep.preprocessing.describe(wrapper.example_size)} ({how})")
    return wrapper


def _export(args: argparse.Namespace, wrapper, fmt: str, path: Path) -> None:
    """Write one artifact (and a Triton model configuration beside it)."""
    from ..export import export_onnx, export_torchscript

    exporters = {"onnx": export_onnx, "torchscript": export_torchscript, "triton": export_onnx}
    started = time.perf_counter()
    with stage(f"exporting {fmt}", verbose=args.verbose):
        exporters[fmt](wrapper, path, overwrite=args.overwrite)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - started:.1f} s)")
    if fmt == "triton":
        from ..serving.triton import write_config

        print(f"wrote {write_config(path)} (Triton model repository {path.parents[2]})")


def _validate(args: argparse.Namespace, model, targets: dict[str, Path]):
    """Every artifact's parity report (printed as tables): one set of eager references for all of them."""
    from ..checks.parity import validate_each
    from ..checks.tolerances import tolerance_for

    tolerances = [
        tolerance_for(
            "onnx" if fmt == "triton" else fmt,
            cam_atol=args.cam_atol,
            logits_rtol=args.logits_rtol,
            noise_factor=args.noise_factor,
        )
        for fmt in targets
    ]
    names = " and ".join(path.name for path in targets.values())
    started = time.perf_counter()
    with stage(f"validating {names} against the eager model", verbose=args.verbose):
        reports = validate_each(list(targets.values()), model, tolerances=tolerances)
    print(f"validated {names} ({time.perf_counter() - started:.1f} s)")
    for path, report in zip(targets.values(), reports, strict=True):
        print(f"parity of {path.name}: {'ok' if report.ok else 'FAILED'}")
        print(common.indent(report.table()))
    return reports


def run(args: argparse.Namespace) -> int:
    """Export, validate, write parity.json; 1 when some artifact fails its parity check."""
    from ..checks.report import parity_document
    from ..errors import GradCAMError
    from ..graph.methods import get_method

    method = get_method(args.method).name  # fail fast, before building anything
    if args.class_input and args.top_k != 1:
        raise GradCAMError("--class-input explains one given class; drop --top-k or use --top-k 1")
    out, targets = _targets(args)
    class_names = _read_class_names(args.class_names) if args.class_names else None
    model = common.load_model(args, args.num_classes)
    wrapper = _build(args, model, method, class_names)
    for fmt, path in targets.items():
        _export(args, wrapper, fmt, path)
    reports = _validate(args, model, targets)
    report_path = common.write_text(out / "parity.json", parity_document(reports))
    print(f"wrote {report_path}")
    failed = [r for r in reports if not r.ok]
    for r in failed:
        print(f"{common.PROG}: parity check failed for {r.artifact}: {'; '.join(r.failures())}", file=sys.stderr)
    return 1 if failed else 0
