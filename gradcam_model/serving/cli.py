"""The ``gradcam serve`` and ``gradcam triton`` commands (registered by :func:`register`); torch-free."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from .._argtypes import port, positive_int

__all__ = ["register", "add_serve_parser", "add_triton_parser", "cmd_serve", "cmd_triton"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def _model_name(text: str) -> str:
    if not _NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"model names are letters, digits, '_', '.' and '-' (got {text!r})")
    return text


def _port_or_off(text: str) -> int:
    return 0 if text.strip() == "0" else port(text)


def _add_verbose(p: argparse.ArgumentParser) -> None:
    # as the other commands: -v after the command name too (main() reads args.verbose)
    p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="INFO logs and tracebacks")


def default_name(artifact: str) -> str:
    """The model name an artifact is served under when none is given: its file stem, made URL-safe."""
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(artifact).stem).lstrip("._-")
    return stem or "model"


def add_serve_parser(sub) -> argparse.ArgumentParser:
    from ..runtime.images import DEFAULT_MAX_SIDE
    from ..runtime.visualize import COLORMAPS
    from .protocol import ServeLimits

    limits = ServeLimits()
    p = sub.add_parser(
        "serve",
        help="serve an artifact over HTTP (KServe v1 :predict/:explain and v2 inference)",
        description="Serve an .onnx artifact with KServe's model server: GET /v2/health/ready, GET /v2/models/NAME, "
        "POST /v2/models/NAME/infer, POST /v1/models/NAME:predict and :explain over HTTP, and the v2 gRPC "
        "service. Preprocessing comes from the artifact. Binds 127.0.0.1 unless --host says otherwise. Needs "
        'pip install "gradcam_model[serve]"; never imports torch. SIGTERM or Ctrl-C: in-flight requests finish, '
        "exit 0. A port in use: one line, exit 3.",
    )
    p.add_argument("artifact", metavar="ARTIFACT", help=".onnx artifact")
    p.add_argument("--name", type=_model_name, metavar="NAME", help="model name in the URLs (default: file stem)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1; 0.0.0.0: every one)")
    p.add_argument("--port", type=port, default=8080, help="HTTP port (default: 8080)")
    p.add_argument(
        "--grpc-port",
        type=_port_or_off,
        default=8081,
        metavar="N",
        help="v2 gRPC port on the same host (default: 8081; 0: none)",
    )
    p.add_argument("--workers", type=positive_int, default=1, metavar="N", help="server processes (default: 1)")
    p.add_argument(
        "--threads",
        type=positive_int,
        default=4,
        metavar="N",
        help="request threads (decode, encode) per process (default: 4)",
    )
    p.add_argument(
        "--max-batch",
        type=positive_int,
        default=8,
        metavar="N",
        help="images per ONNX Runtime call: requests queued while one runs are batched together (default: 8)",
    )
    p.add_argument(
        "--max-instances",
        type=positive_int,
        default=limits.max_instances,
        metavar="N",
        help=f"images per request (default: {limits.max_instances})",
    )
    p.add_argument(
        "--max-body-mb",
        type=positive_int,
        default=limits.max_body_bytes // 2**20,
        metavar="MB",
        help=f"request body limit in MiB (default: {limits.max_body_bytes // 2**20})",
    )
    p.add_argument(
        "--max-size",
        type=positive_int,
        default=DEFAULT_MAX_SIDE,
        metavar="PX",
        help=f"decode larger pictures reduced to this long side (default: {DEFAULT_MAX_SIDE})",
    )
    p.add_argument(
        "--max-pixels",
        type=positive_int,
        default=limits.max_pixels,
        metavar="N",
        help=f"refuse pictures with more pixels, before decoding them (default: {limits.max_pixels})",
    )
    p.add_argument(
        "--ort-spinning",
        action="store_true",
        help="let ONNX Runtime's idle threads spin, as it does by default: about 1 ms less per request on a "
        "machine the server has to itself, much more lost when other work needs the cores (default: they sleep)",
    )
    p.add_argument("--colormap", default="jet", choices=COLORMAPS, metavar="NAME", help="overlay colormap (jet)")
    p.add_argument("--alpha", type=float, default=0.4, metavar="A", help="heat-map weight in [0, 1] (default: 0.4)")
    _add_verbose(p)
    p.set_defaults(handler=cmd_serve)
    return p


def cmd_serve(args: argparse.Namespace) -> int:
    import sys

    from ..errors import InputError
    from .protocol import ServeLimits
    from .server import PortInUseError, ServeOptions, serve

    if not 0.0 <= args.alpha <= 1.0:
        raise InputError(f"--alpha must be in [0, 1], got {args.alpha}")
    limits = ServeLimits(
        max_instances=args.max_instances,
        max_body_bytes=args.max_body_mb * 2**20,
        max_side=args.max_size,
        max_pixels=args.max_pixels,
    )
    options = ServeOptions(
        name=args.name or default_name(args.artifact),
        host=args.host,
        port=args.port,
        grpc_port=args.grpc_port,
        workers=args.workers,
        threads=args.threads,
        max_batch=args.max_batch,
        limits=limits,
        colormap=args.colormap,
        alpha=args.alpha,
        ort_spinning=args.ort_spinning,
    )
    try:
        serve(args.artifact, options)
    except PortInUseError as exc:
        print(f"gradcam: error: {exc}", file=sys.stderr)
        return 3
    return 0


def add_triton_parser(sub) -> argparse.ArgumentParser:
    from .triton import TritonOptions

    defaults = TritonOptions()
    p = sub.add_parser(
        "triton",
        help="write a Triton model repository for an .onnx artifact",
        description="Write REPO/NAME/config.pbtxt (dynamic batching, labels, metadata as parameters), "
        "REPO/NAME/labels.txt and REPO/NAME/1/model.onnx, each atomically. --backend onnxruntime (default): "
        "Triton's ONNX Runtime backend runs the graph on tensors. --backend python: our runtime inside Triton's "
        "python backend (1/model.py, README.md) takes encoded pictures or tensors and returns overlays on "
        "request; its environment needs gradcam_model with numpy<2 (see the README written). Torch-free.",
    )
    p.add_argument("artifact", metavar="ARTIFACT", help=".onnx artifact")
    p.add_argument("--out", required=True, metavar="REPO", help="model repository folder")
    p.add_argument("--name", type=_model_name, metavar="NAME", help="model name (default: file stem)")
    add_triton_options(p, defaults)
    p.add_argument("--overwrite", action="store_true", help="replace an existing model of that name")
    _add_verbose(p)
    p.set_defaults(handler=cmd_triton)
    return p


def add_triton_options(p: argparse.ArgumentParser, defaults) -> None:
    """Triton settings, shared by ``gradcam triton`` and ``gradcam export --format triton``."""
    from .triton import BACKENDS

    group = p.add_argument_group("triton")
    group.add_argument(
        "--max-batch-size",
        type=positive_int,
        default=defaults.max_batch_size,
        metavar="N",
        help=f"Triton max_batch_size (default: {defaults.max_batch_size})",
    )
    group.add_argument(
        "--instance-kind",
        choices=("cpu", "gpu", "auto"),
        default=defaults.instance_kind,
        help=f"instance_group kind: KIND_CPU, KIND_GPU or Triton's choice (default: {defaults.instance_kind})",
    )
    group.add_argument(
        "--instances", type=positive_int, default=defaults.instances, metavar="N", help="model instances (default: 1)"
    )
    group.add_argument(
        "--backend",
        choices=BACKENDS,
        default=defaults.backend,
        help=f"Triton backend that runs the model (default: {defaults.backend})",
    )
    group.add_argument(
        "--execution-env",
        metavar="PATH",
        help="python backend: the environment the model runs in (EXECUTION_ENV_PATH: a folder with bin/activate "
        "or a conda-pack .tar.gz; default: the server's own)",
    )


def cmd_triton(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from .triton import TritonOptions, write_repository

    env = args.execution_env
    if env and args.backend != "python":
        raise InputError("--execution-env is for --backend python (the onnxruntime backend runs no Python)")
    if env and not env.startswith("$$TRITON_MODEL_DIRECTORY"):
        env = str(Path(env).resolve())  # Triton reads a relative path from its own working directory
    options = TritonOptions(
        max_batch_size=args.max_batch_size,
        instance_kind=args.instance_kind,
        instances=args.instances,
        backend=args.backend,
        execution_env=env,
    )
    name = args.name or default_name(args.artifact)
    config = write_repository(args.artifact, args.out, name, options=options, overwrite=args.overwrite)
    written = sorted(str(p.relative_to(config.parent)) for p in config.parent.rglob("*") if p.is_file())
    print(f"wrote {config.parent} ({', '.join(written)})")
    if args.backend == "python":
        print(f"what the model's Python environment needs: {config.parent / 'README.md'}")
    print(f"run: tritonserver --model-repository {Path(args.out).resolve()}")
    return 0


def register(sub, parents=()) -> None:
    """Register ``serve`` and ``triton`` on the ``gradcam`` subcommand parser (``gradcam_model.cli.COMMANDS``)."""
    add_serve_parser(sub)
    add_triton_parser(sub)
