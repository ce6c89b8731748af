"""Benchmark the Ray engine: images/s of the local engine vs Ray with 1 and 2 actors, and the actors' own cost.

``gradcam bench --ray``: one run on N generated JPEGs, one local Ray cluster (loopback
only) for every Ray configuration. Serve side plus ``[ray]`` when ``--artifact`` is
given; without it EfficientNet-Lite0 (the demo model) is exported first, which needs
``gradcam_model[export,demo]``.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import sections

__all__ = ["RayBenchResult", "add_arguments", "markdown", "run", "run_ray_bench"]

BEGIN = "<!-- ray-bench -->"
END = "<!-- /ray-bench -->"


@dataclass
class RayBenchResult:
    """Wall seconds per engine configuration on the same images, and the context they were measured in."""

    images: int
    size: tuple[int, int]
    batch_size: int
    artifact: str
    cluster_start_s: float
    local_s: float
    local_1_thread_s: float = 0.0  # the local engine with a 1-thread ONNX Runtime session, as one actor has
    ray_s: dict[str, float] = field(default_factory=dict)  # "2 actors x 1 thread" -> wall seconds
    actor_ms: dict[str, float] = field(default_factory=dict)  # ms per image inside the actors
    actor_mb: dict[str, float] = field(default_factory=dict)  # peak resident memory of one actor
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    machine: str = ""

    def table(self) -> str:
        lines = [
            "| engine | seconds | images/s | x local | ms/image inside the actors | peak MB per actor |",
            "|---|---:|---:|---:|---:|---:|",
            f"| local (`explain_files`, 2 I/O threads, ORT default threads) | {self.local_s:.2f} | "
            f"{self.images / self.local_s:.1f} | 1.00 | | |",
            f"| local, ORT 1 thread (as one actor) | {self.local_1_thread_s:.2f} | "
            f"{self.images / self.local_1_thread_s:.1f} | {self.local_1_thread_s / self.local_s:.2f} | | |",
        ]
        for name, seconds in self.ray_s.items():
            lines.append(
                f"| Ray, {name} | {seconds:.2f} | {self.images / seconds:.1f} | {seconds / self.local_s:.2f} | "
                f"{self.actor_ms[name]:.1f} | {self.actor_mb[name]:.0f} |"
            )
        return "\n".join(lines)


def run_ray_bench(
    artifact: Path,
    images: list[Path],
    workdir: Path,
    *,
    batch_size: int = 8,
    configs: tuple[tuple[int, int], ...] = ((1, 1), (2, 1)),
    size: tuple[int, int] = (640, 480),
    num_cpus: int | None = None,
    object_store_mb: int = 200,
) -> RayBenchResult:
    """Time the local engine, then each ``(actors, threads)`` configuration on one local Ray cluster."""
    from ..runtime import OnnxExplainer, explain_files, load_explainer
    from ..runtime.ray_engine import explain_dataset, local_cluster

    load_before = os.getloadavg()
    meta = load_explainer(artifact).metadata
    explain_files(
        artifact, images[:batch_size], workdir / "warm", batch_size=batch_size, progress=False, overwrite=True
    )
    started = time.perf_counter()
    explain_files(artifact, images, workdir / "local", batch_size=batch_size, workers=2, progress=False, overwrite=True)
    local_s = time.perf_counter() - started
    one_thread = OnnxExplainer(artifact, providers=["CPUExecutionProvider"], threads=1)
    started = time.perf_counter()
    explain_files(
        one_thread, images, workdir / "local-1", batch_size=batch_size, workers=2, progress=False, overwrite=True
    )
    local_1_thread_s = time.perf_counter() - started
    result = RayBenchResult(
        images=len(images), size=size, batch_size=batch_size,
        artifact=f"{meta.architecture} {meta.method} at {meta.target_layer!r}", cluster_start_s=0.0, local_s=local_s,
        local_1_thread_s=local_1_thread_s,
    )  # fmt: skip
    started = time.perf_counter()
    with local_cluster(num_cpus=num_cpus, object_store_mb=object_store_mb):
        result.cluster_start_s = time.perf_counter() - started
        for actors, threads in configs:
            name = f"{actors} actor{'s' if actors > 1 else ''} x {threads} thread{'s' if threads > 1 else ''}"
            started = time.perf_counter()
            summary = explain_dataset(artifact, images, workdir / f"ray-{actors}x{threads}", batch_size=batch_size,
                                      workers=actors, threads=threads, progress=False, overwrite=True)  # fmt: skip
            result.ray_s[name] = time.perf_counter() - started
            result.actor_ms[name] = 1000 * (summary.actor_seconds or 0.0) / len(images)
            result.actor_mb[name] = summary.actor_peak_mb or 0.0
    result.load_before = tuple(round(x, 2) for x in load_before)
    result.load_after = tuple(round(x, 2) for x in os.getloadavg())
    result.machine = sections.machine()
    return result


def markdown(result: RayBenchResult) -> str:
    """The docs/benchmarks.md section, between the markers."""
    r = result
    return "\n".join([
        BEGIN,
        "## Ray engine",
        "",
        f"Generated by `gradcam bench --ray --images {r.images} --markdown docs/benchmarks.md` "
        "(`gradcam_model.bench.ray_engine`); one run, so read the ratios, not the absolute figures.",
        "",
        f"- {r.images} generated JPEGs of {r.size[0]}x{r.size[1]}, {r.artifact}, batch {r.batch_size}, JPEG overlays",
        f"- {r.machine}; load average before {list(r.load_before)}, after {list(r.load_after)} "
        "(a shared machine: other work ran beside this)",
        f"- one local Ray cluster (loopback only) for the Ray rows, started in {r.cluster_start_s:.1f} s (not in "
        "the rows); each Ray row includes starting its actors (one ONNX Runtime session each) and the driver "
        "writing every overlay",
        "- ms/image inside the actors: decode + preprocess + run + compose/encode overlays, per image, summed "
        "over actors (with 2 actors on 2 cores they also compete with the driver)",
        "",
        r.table(),
        "",
        END,
    ])  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``gradcam bench --ray`` options."""
    sections.add_input_arguments(parser, images=512)
    parser.add_argument("--size", nargs=2, type=int, default=(640, 480), metavar=("W", "H"), help="(default: 640 480)")
    parser.add_argument("--batch-size", type=int, default=8, metavar="B", help="images per run (default: 8)")
    parser.add_argument(
        "--config", action="append", metavar="AxT", help="actors x threads per actor, repeatable (default: 1x1 2x1)"
    )
    sections.add_output_arguments(parser, kept="images, artifact and outputs")


def run(args: argparse.Namespace) -> int:
    """Run ``gradcam bench --ray``; print the table; return 0."""
    configs = tuple(tuple(int(x) for x in c.lower().split("x")) for c in (args.config or ["1x1", "2x1"]))
    with sections.inputs(args, tuple(args.size), prefix="gradcam-bench-ray-") as (workdir, artifact, images):
        result = run_ray_bench(artifact, images, workdir, batch_size=args.batch_size, configs=configs,
                               size=tuple(args.size))  # fmt: skip
    print(result.table())
    print(f"load average before {list(result.load_before)}, after {list(result.load_after)}")
    sections.write(args, result, markdown(result))
    return 0
