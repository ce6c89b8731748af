"""Timing: every contestant of a configuration interleaved on one input, and the run over configurations."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..checks.calibration import random_model
from ..errors import GradCAMError
from .configs import BenchConfig, select_configs
from .contestants import as_map, contestants, export_logits_onnx, normalized
from .machine import default_threads, machine_info, resolve_device
from .memory import PROBES, measure
from .results import CONTESTANTS, FLOOR, MAP_CONTESTANTS, OURS, BenchResult, ConfigResult, Timing

__all__ = ["bench_config", "run_benchmark", "time_interleaved"]

log = logging.getLogger(__name__)


def _build_model(config: BenchConfig, seed: int = 0) -> nn.Module:
    """The configuration's model with random weights made fit for timing (:mod:`gradcam_model.checks.calibration`)."""
    if config.arch.startswith("timm:"):
        try:
            import timm  # noqa: F401
        except ImportError as exc:
            raise GradCAMError(f"configuration {config.name} needs timm; pip install 'gradcam_model[demo]'") from exc
    return random_model(config.arch, size=config.size, num_classes=config.num_classes, seed=seed)


def time_interleaved(
    runners: dict[str, Callable[[], object]],
    *,
    warmup: int,
    repeats: int,
    synchronize: Callable[[], None] = lambda: None,
) -> tuple[dict[str, list[float]], dict[str, object]]:
    """Median-ready samples per contestant; ``synchronize`` ends each timed call (a GPU's queue)."""
    keys = list(runners)
    outputs: dict[str, object] = {}
    for _ in range(warmup):
        for key in keys:
            outputs[key] = runners[key]()
        synchronize()
    samples: dict[str, list[float]] = {k: [] for k in keys}
    for round_ in range(repeats):
        # rotate the order so no contestant always follows the same one (caches, idle threads)
        shift = round_ % len(keys)
        for key in keys[shift:] + keys[:shift]:
            started = time.perf_counter()
            outputs[key] = runners[key]()
            synchronize()
            samples[key].append(time.perf_counter() - started)
    return samples, outputs


def _build_and_export(config: BenchConfig, model: nn.Module, example: torch.Tensor, workdir: Path):
    """The wrapper, its build time, the three artifacts' paths, their export times, and the ONNX validation's
    time and verdict (``ok``, ``explained`` or ``FAIL``).

    The logits-only export is both a contestant's artifact and the yardstick of the
    export-time target: exported once, timed once.
    """
    from ..checks.parity import validate
    from ..export import export_onnx, export_torchscript
    from ..graph.wrapper import GradCAMModel

    started = time.perf_counter()
    wrapper = GradCAMModel(model, config.layer, example_input=example, architecture=config.arch)
    build_s = time.perf_counter() - started
    paths = {
        "onnx": workdir / f"{config.name}.onnx",
        "torchscript": workdir / f"{config.name}.pt",
        "onnx_logits": workdir / f"{config.name}.logits.onnx",
    }
    writers = {
        "onnx": lambda: export_onnx(wrapper, paths["onnx"], overwrite=True),
        "torchscript": lambda: export_torchscript(wrapper, paths["torchscript"], overwrite=True),
        "onnx_logits": lambda: export_logits_onnx(
            model, example, paths["onnx_logits"], dynamic_spatial=wrapper.dynamic_spatial
        ),
    }
    export_s = {}
    for key, write in writers.items():
        started = time.perf_counter()
        write()
        export_s[key] = time.perf_counter() - started
    started = time.perf_counter()
    report = validate(paths["onnx"], model)
    validate_s = time.perf_counter() - started
    log.info(
        "%s: built in %.1f s, exports %s, validation %.1f s (%s)",
        config.name,
        build_s,
        {k: round(v, 1) for k, v in export_s.items()},
        validate_s,
        "ok" if report.ok else "; ".join(report.failures()),
    )
    verdict = "FAIL" if not report.ok else report.outputs["cam"].verdict
    return wrapper, build_s, paths, export_s, (validate_s, verdict)


def _warm_up_exporters(workdir: Path) -> None:
    """One tiny export of each kind, untimed: torch.onnx's first call in a process imports and builds its
    registry (seconds), which would otherwise land on whichever export of the first configuration runs first."""
    from ..export import export_onnx
    from ..graph.wrapper import GradCAMModel

    gen = torch.Generator().manual_seed(0)
    tiny = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    example = torch.randn(2, 3, 8, 8, generator=gen)
    export_logits_onnx(tiny, example, workdir / "warm-up.logits.onnx")
    export_onnx(GradCAMModel(tiny, "1", example_input=example), workdir / "warm-up.onnx", overwrite=True)
    for name in ("warm-up.logits.onnx", "warm-up.onnx"):
        (workdir / name).unlink()


def _parity(outputs: dict[str, object]) -> dict[str, float]:
    """Max |map - reference_cam| of each contestant that gives maps (Captum's min-max normalized first)."""
    reference = as_map(outputs["reference_cam"])
    parity = {}
    for key in MAP_CONTESTANTS:
        got = as_map(outputs[key])
        if key == "captum":
            got = normalized(got)
        parity[key] = float(np.abs(got - reference).max())
    return parity


def bench_config(
    config: BenchConfig,
    workdir: Path,
    *,
    threads: int,
    warmup: int,
    repeats: int,
    memory_runs: int,
    spinning: bool,
    device: torch.device,
    memory_probes: int = PROBES,
) -> ConfigResult:
    model = _build_model(config)
    gen = torch.Generator().manual_seed(1)
    image = torch.randn(config.batch, 3, config.size, config.size, generator=gen)
    example = torch.randn(2, 3, config.size, config.size, generator=gen)
    wrapper, build_s, paths, export_s, (validate_s, verdict) = _build_and_export(config, model, example, workdir)
    sizes = {k: p.stat().st_size for k, p in paths.items()}

    # traced and exported on the CPU (artifacts are device-neutral), timed on `device`
    model, wrapper, image = model.to(device), wrapper.to(device), image.to(device)
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with contextlib.ExitStack() as stack:
        runners = contestants(config, model, wrapper, paths, image, threads=threads, spinning=spinning, stack=stack)
        samples, outputs = time_interleaved(runners, warmup=warmup, repeats=repeats, synchronize=synchronize)
    timings = {k: Timing.from_seconds(samples[k]) for k in CONTESTANTS}

    parity = _parity(outputs)
    memory = {}
    if memory_runs > 0 and device.type == "cpu":  # the probe measures host memory of CPU sessions
        shape = [config.batch, 3, config.size, config.size]
        for key, path_key in ((OURS, "onnx"), (FLOOR, "onnx_logits")):
            memory[key] = measure(paths[path_key], shape, threads, spinning, memory_runs, memory_probes)
    return ConfigResult(
        config,
        timings,
        build_s,
        export_s,
        sizes,
        validate_s=validate_s,
        validation=verdict,
        memory_mb=memory,
        parity=parity,
    )


def _settings(configs, quick, repeats, warmup, threads, memory_runs, ort_spinning, device: torch.device) -> dict:
    """The run's settings with their defaults filled in, checked; recorded with the results."""
    repeats = repeats if repeats is not None else (1 if quick else 15)
    warmup = warmup if warmup is not None else (1 if quick else 3)
    memory_runs = memory_runs if memory_runs is not None else (1 if quick else 3)
    threads = threads if threads is not None else default_threads()
    for what, value, low in (
        ("repeats", repeats, 1),
        ("warmup", warmup, 0),
        ("threads", threads, 1),
        ("memory_runs", memory_runs, 0),
    ):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{what} must be an int >= {low}, got {value!r}")
    if not configs:
        raise ValueError("no configuration to run")
    return {
        "quick": quick,
        "repeats": repeats,
        "warmup": warmup,
        "threads": threads,
        "memory_runs": memory_runs,
        "memory_probes": 1 if quick else PROBES,  # fresh processes per memory figure (median)
        "ort_spinning": ort_spinning,
        "device": str(device),
        # libgomp's idle-thread policy shapes the eager torch contestants; recorded, not changed
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset (libgomp default)"),
        "configs": [c.name for c in configs],
    }


def run_benchmark(
    configs: Sequence[BenchConfig] | None = None,
    *,
    quick: bool = False,
    repeats: int | None = None,
    warmup: int | None = None,
    threads: int | None = None,
    memory_runs: int | None = None,
    ort_spinning: bool = False,
    workdir: str | os.PathLike | None = None,
    progress: Callable[[str], None] | None = None,
    device: str | torch.device | None = "auto",
) -> BenchResult:
    """Run every contestant on each configuration and return the measurements.

    Args:
        configs: what to run (default: :data:`CONFIGS`, or :data:`QUICK_CONFIGS` with ``quick``).
        quick: tiny settings for a smoke run: 1 repetition and 1 warm-up unless given.
        repeats: interleaved timed rounds (default 15).
        warmup: untimed rounds first (default 3: TorchScript's profiling executor
            optimizes on its first calls).
        threads: intra-op threads for torch and ONNX Runtime alike (default: usable cores).
        memory_runs: runs in each memory probe; 0 skips the probes (default 3, quick 1).
        ort_spinning: let ONNX Runtime's idle threads spin. Off by default: with
            sessions interleaved in one process, one session's spinning threads take
            the cores from whatever runs next (measured: times doubled on a busy
            2-core machine).
        workdir: keep the artifacts there (default: a temporary directory, removed).
        progress: called with a line after each configuration.
        device: ``"auto"`` (a CUDA GPU when torch sees one, else the CPU), ``"cpu"``,
            ``"cuda"`` or ``"cuda:N"``. On a GPU the torch contestants run there, ONNX
            Runtime uses its CUDA provider with the input and outputs in device memory,
            and each timed call ends with ``torch.cuda.synchronize()``; the host-memory
            probes are skipped.
    """
    configs = list(configs) if configs is not None else select_configs(None, quick=quick)
    settings = _settings(configs, quick, repeats, warmup, threads, memory_runs, ort_spinning, resolve_device(device))
    device, threads = torch.device(settings["device"]), settings["threads"]
    machine = machine_info(threads, device)
    previous_threads = torch.get_num_threads()
    results = []
    with contextlib.ExitStack() as stack:
        if workdir is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gradcam-bench-")))
        else:
            directory = Path(workdir)
            directory.mkdir(parents=True, exist_ok=True)
        torch.set_num_threads(threads)
        stack.callback(torch.set_num_threads, previous_threads)
        _warm_up_exporters(directory)
        for i, config in enumerate(configs, 1):
            started = time.perf_counter()
            log.info("[%d/%d] %s", i, len(configs), config.name)
            result = bench_config(
                config,
                directory,
                threads=threads,
                warmup=settings["warmup"],
                repeats=settings["repeats"],
                memory_runs=settings["memory_runs"],
                memory_probes=settings["memory_probes"],
                spinning=ort_spinning,
                device=device,
            )
            results.append(result)
            if progress is not None:
                progress(
                    f"[{i}/{len(configs)}] {config.name}: ORT Grad-CAM {result.timings[OURS].median_ms:.1f} ms, "
                    f"{result.ratio(OURS):.2f}x the logits-only artifact ({time.perf_counter() - started:.0f} s)"
                )
    with contextlib.suppress(OSError, AttributeError):
        machine["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    return BenchResult(machine, settings, results)
