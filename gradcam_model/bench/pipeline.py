"""Benchmark the explain pipeline: explain_files end to end vs ONNX Runtime's compute vs a plain loop.

``gradcam bench --pipeline``: one run on N generated JPEGs. Serve side only when
``--artifact`` is given (no torch); without it, EfficientNet-Lite0 (the demo model)
is exported first, which needs ``gradcam_model[export,demo]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import sections

__all__ = ["PipelineResult", "add_arguments", "markdown", "run", "run_pipeline_bench"]

BEGIN = "<!-- pipeline-bench -->"
END = "<!-- /pipeline-bench -->"


@dataclass
class PipelineResult:
    """Seconds for each way of explaining the same images, and the context they were measured in."""

    images: int
    size: tuple[int, int]
    batch_size: int
    workers: int
    overlay_format: str
    artifact: str
    provider: str
    compute_s: float
    loop_s: float
    pipeline_s: float
    cli_s: float | None
    help_s: float | None
    serve_help_s: float | None
    venv_sizes: dict[str, str]
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    machine: str

    def table(self) -> str:
        rows = [
            ("ONNX Runtime compute only (preprocessed batches)", self.compute_s),
            ("plain loop: decode + preprocess + run, no outputs", self.loop_s),
            ("explain_files in process (overlays, grid, CSV)", self.pipeline_s),
        ]
        if self.cli_s is not None:
            rows.append(("`gradcam explain` subprocess, start-up included", self.cli_s))
        lines = ["| what | seconds | images/s | x compute |", "|---|---:|---:|---:|"]
        for name, seconds in rows:
            lines.append(f"| {name} | {seconds:.2f} | {self.images / seconds:.1f} | {seconds / self.compute_s:.2f} |")
        return "\n".join(lines)


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def run_pipeline_bench(
    artifact: Path,
    images: list[Path],
    workdir: Path,
    *,
    batch_size: int = 8,
    workers: int = 2,
    overlay_format: str = "jpg",
    cli: bool = True,
    size: tuple[int, int] = (640, 480),
    serve_venv: Path | None = None,
) -> PipelineResult:
    """Time the three ways on the same images, in one process (and the CLI in a subprocess)."""
    from ..runtime import explain_files, load_explainer, load_image, preprocess

    load_before = os.getloadavg()
    explainer = load_explainer(artifact)
    meta = explainer.metadata
    batches = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
    inputs = [np.stack([preprocess(load_image(p), meta) for p in b]) for b in batches]
    explainer(inputs[0])  # warm-up: session arenas, kernel selection

    compute_s = _timed(lambda: [explainer(x) for x in inputs])
    inputs.clear()
    loop_s = _timed(lambda: [explainer(np.stack([preprocess(load_image(p), meta) for p in b])) for b in batches])
    out = workdir / "out-library"
    pipeline_s = _timed(
        lambda: explain_files(
            explainer, images, out, batch_size=batch_size, workers=workers, overlay_format=overlay_format,
            progress=False, overwrite=True,
        )
    )  # fmt: skip
    cli_s, help_s = (
        _cli_timings(artifact, images[0].parent, workdir, batch_size, workers, overlay_format) if cli else (None, None)
    )
    serve_help_s, sizes = _serve_venv_figures(Path(serve_venv)) if serve_venv is not None else (None, {})
    return PipelineResult(
        images=len(images),
        size=size,
        batch_size=batch_size,
        workers=workers,
        overlay_format=overlay_format,
        artifact=f"{meta.architecture} {meta.method} at {meta.target_layer!r}",
        provider=getattr(explainer, "provider", "libtorch"),
        compute_s=compute_s,
        loop_s=loop_s,
        pipeline_s=pipeline_s,
        cli_s=cli_s,
        help_s=help_s,
        serve_help_s=serve_help_s,
        venv_sizes=sizes,
        load_before=tuple(round(x, 2) for x in load_before),
        load_after=tuple(round(x, 2) for x in os.getloadavg()),
        machine=sections.machine(),
    )


def _cli_timings(artifact, folder, workdir, batch_size, workers, overlay_format) -> tuple[float, float]:
    """Seconds of one `gradcam explain` subprocess on ``folder``, and of `gradcam explain --help` (best of 3)."""
    command = [sys.executable, "-m", "gradcam_model"]
    argv = ["explain", str(artifact), str(folder), "--out", str(workdir / "out-cli"), "--overwrite"]
    argv += ["--batch-size", str(batch_size), "--workers", str(workers), "--overlay-format", overlay_format]
    cli_s = _timed(lambda: subprocess.run([*command, *argv], check=True, capture_output=True))
    help_s = min(
        _timed(lambda: subprocess.run([*command, "explain", "--help"], check=True, capture_output=True))
        for _ in range(3)
    )
    return cli_s, help_s


def _serve_venv_figures(serve_venv: Path) -> tuple[float, dict[str, str]]:
    """`gradcam explain --help` seconds in a serve-only venv (best of 3), and both venvs' sizes."""
    gradcam = serve_venv / "bin" / "gradcam"
    help_s = min(
        _timed(lambda: subprocess.run([str(gradcam), "explain", "--help"], check=True, capture_output=True))
        for _ in range(3)
    )
    return help_s, {"serve (pip install .)": _du(serve_venv), f"this one ({sys.prefix})": _du(Path(sys.prefix))}


def _du(path: Path) -> str:
    done = subprocess.run(["du", "-sh", "--dereference-args", str(path)], capture_output=True, text=True)
    return done.stdout.split()[0] if done.returncode == 0 and done.stdout else "?"


def markdown(result: PipelineResult) -> str:
    """The docs/benchmarks.md section, between the markers."""
    r = result
    lines = [
        BEGIN,
        "## Explain pipeline",
        "",
        f"Generated by `gradcam bench --pipeline --images {r.images} --markdown docs/benchmarks.md` "
        "(`gradcam_model.bench.pipeline`); one run, so read the ratios, not the absolute figures.",
        "",
        f"- {r.images} generated JPEGs of {r.size[0]}x{r.size[1]}, {r.artifact}, batch {r.batch_size}, "
        f"{r.workers} worker threads, {r.overlay_format.upper()} overlays, {r.provider}",
        f"- {r.machine}; load average before {list(r.load_before)}, after {list(r.load_after)} "
        "(a shared machine: other work ran beside this)",
        "",
        r.table(),
        "",
    ]
    if r.help_s is not None:
        help_line = f"`gradcam explain --help` (best of 3): {r.help_s:.2f} s in this venv"
        if r.serve_help_s is not None:
            help_line += f", {r.serve_help_s:.2f} s in the serve-only venv"
        lines += [help_line + ".", ""]
    if r.venv_sizes:
        lines += ["Venv sizes (`du -sh`): " + "; ".join(f"{k}: {v}" for k, v in r.venv_sizes.items()) + ".", ""]
    lines.append(END)
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``gradcam bench --pipeline`` options."""
    sections.add_input_arguments(parser, images=256)
    parser.add_argument("--size", nargs=2, type=int, default=(640, 480), metavar=("W", "H"), help="(default: 640 480)")
    parser.add_argument("--batch-size", type=int, default=8, metavar="B", help="images per run (default: 8)")
    parser.add_argument("--workers", type=int, default=2, metavar="N", help="decode/encode threads (default: 2)")
    parser.add_argument("--overlay-format", choices=("jpg", "png"), default="jpg", help="(default: jpg)")
    parser.add_argument("--no-cli", action="store_true", help="skip the `gradcam explain` subprocess timings")
    parser.add_argument(
        "--serve-venv", metavar="DIR", help="a venv with `pip install .` only: time --help there, compare venv sizes"
    )
    sections.add_output_arguments(parser, kept="images, artifact and outputs")


def run(args: argparse.Namespace) -> int:
    """Run ``gradcam bench --pipeline``; print the table; return 0."""
    with sections.inputs(args, tuple(args.size), prefix="gradcam-bench-") as (workdir, artifact, images):
        result = run_pipeline_bench(
            artifact,
            images,
            workdir,
            batch_size=args.batch_size,
            workers=args.workers,
            overlay_format=args.overlay_format,
            cli=not args.no_cli,
            size=tuple(args.size),
            serve_venv=Path(args.serve_venv) if args.serve_venv else None,
        )
    print(result.table())
    if result.help_s is not None:
        print(f"gradcam explain --help: {result.help_s:.2f} s")
    sections.write(args, result, markdown(result))
    return 0
