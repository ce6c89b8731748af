"""Each CAM method's cost: its ONNX artifact's run time as a multiple of the logits-only model's.

``gradcam bench --methods``: for one configuration (default ``resnet50-layer4-224-b1``), every
method (:data:`gradcam_model.graph.methods.METHODS`, or ``--only``) is built and exported once,
then all the artifacts and the logits-only ONNX model run in interleaved rounds under ONNX
Runtime on the CPU (each round in a rotated order), so they share whatever load the machine
has. A method the configuration's layer cannot carry is listed with the reason it was
refused. The README's method table quotes the multiples.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import sections

__all__ = ["MethodsResult", "add_arguments", "markdown", "run", "run_methods_bench"]

BUILDS_ARTIFACTS = True  # `gradcam bench` checks the build side is installed first
BEGIN = "<!-- methods-bench -->"
END = "<!-- /methods-bench -->"
DEFAULT_CONFIG = "resnet50-layer4-224-b1"


@dataclass
class MethodTiming:
    """One method's median run time (ms) and its multiple of the logits-only median; or why it was refused."""

    method: str
    gradient: bool
    median_ms: float | None = None
    ratio: float | None = None
    export_s: float | None = None
    refused: str = ""


@dataclass
class MethodsResult:
    """Every method's timing in one run, the logits-only median, and the context."""

    config: str
    threads: int
    repeats: int
    logits_ms: float
    rows: list[MethodTiming] = field(default_factory=list)
    load_before: tuple[float, ...] = ()
    load_after: tuple[float, ...] = ()
    machine: str = ""

    def table(self) -> str:
        lines = [
            "| method | gradient | median ms | x logits-only | export s |",
            "|---|---|---:|---:|---:|",
            f"| logits only (no map) | no | {self.logits_ms:.1f} | 1.00 | |",
        ]
        for r in self.rows:
            if r.refused:
                lines.append(f"| `{r.method}` | {'yes' if r.gradient else 'no'} | refused: {r.refused} | | |")
            else:
                lines.append(f"| `{r.method}` | {'yes' if r.gradient else 'no'} | {r.median_ms:.1f} | {r.ratio:.2f} "
                             f"| {r.export_s:.1f} |")  # fmt: skip
        return "\n".join(lines)


def _method_runner(model, config, name: str, example, workdir: Path, threads: int, row: MethodTiming):
    """Build and export ``name``'s artifact; its ORT runner (the maps), or None with ``row.refused`` set."""
    from ..errors import GradCAMError
    from ..export import export_onnx
    from ..graph.wrapper import GradCAMModel
    from .contestants import ort_runner, ort_session

    started = time.perf_counter()
    try:
        wrapper = GradCAMModel(model, config.layer, method=name, example_input=example, architecture=config.arch)
        path = export_onnx(wrapper, workdir / f"{''.join(c if c.isalnum() else '_' for c in name)}.onnx")
    except GradCAMError as exc:
        row.refused = str(exc).splitlines()[0]
        return None
    row.export_s = time.perf_counter() - started
    return ort_runner(ort_session(path, threads, False, example.device), example, 4)


def run_methods_bench(
    config_name: str,
    methods: list[str],
    workdir: Path,
    *,
    repeats: int = 10,
    warmup: int = 2,
    threads: int | None = None,
) -> MethodsResult:
    """Time ``methods`` at the configuration ``config_name`` against its logits-only ONNX model."""
    import torch

    from ..errors import InputError
    from .configs import select_configs
    from .machine import default_threads

    chosen = select_configs([config_name])
    if len(chosen) != 1:
        raise InputError(f"--config names one configuration; {config_name!r} matches {len(chosen)}")
    config = chosen[0]
    threads = threads or default_threads()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # for the exports; restored below: a caller's process keeps its own
    try:
        return _run(config, methods, workdir, repeats, warmup, threads)
    finally:
        torch.set_num_threads(before)


def _run(config, methods: list[str], workdir: Path, repeats: int, warmup: int, threads: int) -> MethodsResult:
    import torch

    from ..checks.calibration import random_model
    from ..graph.methods import get_method
    from .contestants import export_logits_onnx, ort_runner, ort_session
    from .timing import time_interleaved

    load_before = os.getloadavg()
    model = random_model(config.arch, size=config.size, num_classes=config.num_classes, seed=0)
    example = torch.randn(config.batch, 3, config.size, config.size, generator=torch.Generator().manual_seed(0))
    export_logits_onnx(model, example, workdir / "logits.onnx")
    runners = {"": ort_runner(ort_session(workdir / "logits.onnx", threads, False, example.device), example, 0)}
    rows = []
    for name in methods:
        rows.append(MethodTiming(name, get_method(name).uses_gradients))
        runner = _method_runner(model, config, name, example, workdir, threads, rows[-1])
        if runner is not None:
            runners[name] = runner
    samples, _ = time_interleaved(runners, warmup=warmup, repeats=repeats)
    medians = {key: 1e3 * float(np.median(values)) for key, values in samples.items()}
    for row in rows:
        if not row.refused:
            row.median_ms, row.ratio = medians[row.method], medians[row.method] / medians[""]
    return MethodsResult(
        config=config.name,
        threads=threads,
        repeats=repeats,
        logits_ms=medians[""],
        rows=rows,
        load_before=tuple(round(x, 2) for x in load_before),
        load_after=tuple(round(x, 2) for x in os.getloadavg()),
        machine=sections.machine(),
    )


def markdown(result: MethodsResult) -> str:
    """The docs/benchmarks.md section, between the markers."""
    r = result
    return "\n".join([
        BEGIN,
        "## Cost of each method",
        "",
        f"Generated by `gradcam bench --methods --config {r.config}{_only(r)} --repeats {r.repeats} --markdown "
        "docs/benchmarks.md` (`gradcam_model.bench.methods`); one run, every artifact and the logits-only model "
        "interleaved, so read the multiples, not the absolutes.",
        "",
        f"- {r.config}: ONNX Runtime on the CPU, {r.threads} threads, random weights; the median of {r.repeats} "
        "runs each; *x logits-only*: the artifact's median over the logits-only ONNX model's (the same network "
        "without the map)",
        f"- {r.machine}; load average before {list(r.load_before)}, after {list(r.load_after)}",
        "",
        r.table(),
        "",
        END,
    ])  # fmt: skip


def _only(result: MethodsResult) -> str:
    from ..graph.methods import METHODS

    names = [row.method for row in result.rows]
    return "" if names == list(METHODS) else f" --only {','.join(names)}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``gradcam bench --methods`` options."""
    from .._argtypes import positive_int
    from ..graph.methods import METHODS

    parser.add_argument("--config", default=DEFAULT_CONFIG, metavar="NAME",
                        help=f"the configuration (a `gradcam bench` one; default: {DEFAULT_CONFIG})")  # fmt: skip
    parser.add_argument("--only", metavar="M[,M...]", default=",".join(METHODS),
                        help="the methods to time, comma-separated (default: every method)")  # fmt: skip
    parser.add_argument("--repeats", type=positive_int, default=10, metavar="N", help="timed rounds (default: 10)")
    parser.add_argument("--warmup", type=positive_int, default=2, metavar="N", help="untimed rounds first (default: 2)")
    parser.add_argument("--threads", type=positive_int, metavar="N", help="ONNX Runtime threads (default: the cores)")
    parser.add_argument("--workdir", metavar="DIR", help="keep the artifacts in DIR")
    parser.add_argument("--markdown", metavar="FILE", help="write the section into FILE (docs/benchmarks.md)")


def run(args: argparse.Namespace) -> int:
    """Run ``gradcam bench --methods``; print the table; return 0."""
    from ..graph.methods import get_method
    from .report import update_section

    methods = [name.strip() for name in args.only.split(",") if name.strip()]
    for name in methods:
        get_method(name)  # an unknown name: one line before any export
    with tempfile.TemporaryDirectory(prefix="gradcam-bench-methods-") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        result = run_methods_bench(args.config, methods, workdir, repeats=args.repeats, warmup=args.warmup,
                                   threads=args.threads)  # fmt: skip
    print(result.table())
    if args.markdown:
        update_section(Path(args.markdown), markdown(result))
        print(f"wrote {args.markdown}")
    return 0
