"""Benchmarks: the explanation at the cost of plain inference, side by side with other libraries.

For each configuration (architecture, target layer, input size, batch) one process
builds the model once and times every contestant on the same input, interleaved
round by round (the order rotates each round), after a warm-up, with the same
number of threads everywhere (``torch.set_num_threads`` and ONNX Runtime's
``intra_op_num_threads``):

- ``torch_logits``: the model itself in eager torch, logits only;
- ``reference_cam``: :func:`gradcam_model.reference_cam` (hooks + live autograd);
- ``gradcam_eager``: :class:`gradcam_model.GradCAMModel` in eager torch under
  ``inference_mode``;
- ``ort_logits``: the plain model exported with ``torch.onnx.export(dynamo=True)``
  (dynamic batch) under ONNX Runtime: the floor, what inference alone costs;
- ``ort_gradcam``: our ONNX Grad-CAM artifact under ONNX Runtime;
- ``torchscript``: our TorchScript Grad-CAM artifact under libtorch;
- ``pytorch_grad_cam``: pytorch-grad-cam's ``GradCAM`` (its own copy of the model,
  since its hooks stay registered);
- ``captum``: Captum's ``LayerGradCam`` (ReLU'd) + ``LayerAttribution.interpolate``.

Figures are medians of the interleaved runs; ratios compare medians of one run.
Peak memory of the two ONNX Runtime sessions is measured in a fresh interpreter
each (see :func:`ort_peak_memory`). ``gradcam bench`` is the CLI front end
(:func:`add_arguments` + :func:`run`); :func:`run_benchmark` is the library entry.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import difflib
import fnmatch
import inspect
import io
import json
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import GradCAMError

__all__ = [
    "BenchConfig",
    "BenchResult",
    "CONFIGS",
    "CONTESTANTS",
    "ConfigResult",
    "QUICK_CONFIGS",
    "TargetCheck",
    "Timing",
    "UnknownConfigError",
    "add_arguments",
    "machine_info",
    "ort_peak_memory",
    "run",
    "run_benchmark",
    "select_configs",
]

log = logging.getLogger(__name__)

# key -> label, in the order of every table
CONTESTANTS: dict[str, str] = {
    "torch_logits": "torch eager, logits only",
    "reference_cam": "reference_cam (eager autograd)",
    "gradcam_eager": "GradCAMModel, eager torch",
    "ort_logits": "ORT, logits-only ONNX (floor)",
    "ort_gradcam": "ORT, Grad-CAM artifact (ours)",
    "torchscript": "TorchScript Grad-CAM artifact (ours)",
    "pytorch_grad_cam": "pytorch-grad-cam GradCAM",
    "captum": "Captum LayerGradCam + interpolate",
}
FLOOR = "ort_logits"
OURS = "ort_gradcam"
# contestants that produce a map comparable with reference_cam's
_MAP_CONTESTANTS = ("gradcam_eager", "ort_gradcam", "torchscript", "pytorch_grad_cam", "captum")
_QUICK_SIZE, _QUICK_BATCH = 64, 2


class UnknownConfigError(GradCAMError, ValueError):
    """A ``--config`` name that matches no benchmark configuration."""


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark setting and the targets its results are checked against.

    ``arch`` is a torchvision model name, or ``timm:<name>`` for a timm model.
    ``max_overhead`` bounds ORT Grad-CAM / ORT logits-only; ``min_speedups`` pairs a
    contestant with the factor by which the ORT Grad-CAM artifact must beat it.
    """

    arch: str
    layer: str
    size: int
    batch: int
    num_classes: int = 1000
    max_overhead: float | None = None
    min_speedups: tuple[tuple[str, float], ...] = ()

    @property
    def name(self) -> str:
        return f"{self.arch.split(':')[-1]}-{self.layer}-{self.size}-b{self.batch}"

    def quick(self) -> BenchConfig:
        """The same model and layer at the quick mode's tiny size and batch."""
        return dataclasses.replace(self, size=min(self.size, _QUICK_SIZE), batch=_QUICK_BATCH)


_LIBRARY_TARGETS = (("pytorch_grad_cam", 4.0), ("captum", 2.5))

CONFIGS: tuple[BenchConfig, ...] = (
    BenchConfig("resnet50", "layer4", 224, 1, max_overhead=1.10),
    BenchConfig("resnet50", "layer4", 224, 8, max_overhead=1.10, min_speedups=_LIBRARY_TARGETS),
    # the original Grad-CAM write-up's setup: 10 classes at 128 px
    BenchConfig("vgg19", "features", 128, 8, num_classes=10, max_overhead=1.10, min_speedups=_LIBRARY_TARGETS),
    BenchConfig("resnet50", "layer3", 224, 8),
    BenchConfig("mobilenet_v3_large", "features", 224, 8, max_overhead=1.10),
    BenchConfig("mobilenet_v3_large", "features.12", 224, 8, max_overhead=1.6),
    BenchConfig("timm:efficientnet_lite0", "bn2", 224, 8, max_overhead=1.10),
)
QUICK_CONFIGS: tuple[BenchConfig, ...] = (BenchConfig("resnet18", "layer4", _QUICK_SIZE, _QUICK_BATCH, num_classes=10),)


def select_configs(names: Sequence[str] | None, *, quick: bool = False) -> list[BenchConfig]:
    """Configurations by name or shell pattern (``resnet50-*``); all (or the quick set) when none.

    With ``quick`` the chosen configurations run at the quick mode's size and batch
    (named accordingly); without names, quick mode runs :data:`QUICK_CONFIGS`.
    """
    if not names:
        return list(QUICK_CONFIGS) if quick else list(CONFIGS)
    known = {c.name: c for c in (*CONFIGS, *QUICK_CONFIGS)}
    chosen: list[BenchConfig] = []
    for pattern in names:
        matches = [c for n, c in known.items() if fnmatch.fnmatchcase(n, pattern)]
        if not matches:
            close = difflib.get_close_matches(pattern, list(known), n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise UnknownConfigError(
                f"no benchmark configuration matches {pattern!r}.{hint} "
                f"Known: {', '.join(known)} (shell patterns such as 'resnet50-*' work too)."
            )
        chosen.extend(c for c in matches if c not in chosen)
    return [c.quick() for c in chosen] if quick else chosen


@dataclass(frozen=True)
class Timing:
    """Summary of one contestant's wall-clock samples, in milliseconds."""

    median_ms: float
    q1_ms: float
    q3_ms: float
    min_ms: float
    runs: int

    @classmethod
    def from_seconds(cls, samples: Sequence[float]) -> Timing:
        ms = sorted(1e3 * s for s in samples)
        if len(ms) >= 2:
            q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive")
        else:
            q1 = q3 = ms[0]
        return cls(statistics.median(ms), q1, q3, ms[0], len(ms))


@dataclass(frozen=True)
class TargetCheck:
    """One target of the issue, checked against measured medians."""

    config: str
    description: str
    value: float
    bound: float
    kind: str  # "max" (value <= bound) or "min" (value >= bound)

    @property
    def met(self) -> bool:
        return self.value <= self.bound if self.kind == "max" else self.value >= self.bound


@dataclass
class ConfigResult:
    """Everything measured for one configuration."""

    config: BenchConfig
    timings: dict[str, Timing]
    build_s: float
    export_s: dict[str, float]
    artifact_bytes: dict[str, int]
    memory_mb: dict[str, dict[str, float]] = field(default_factory=dict)
    parity: dict[str, float] = field(default_factory=dict)

    def ratio(self, contestant: str, baseline: str = FLOOR) -> float:
        """Median of ``contestant`` over the median of ``baseline`` (same run)."""
        return self.timings[contestant].median_ms / self.timings[baseline].median_ms

    @property
    def ratios_to_floor(self) -> dict[str, float]:
        return {k: self.ratio(k) for k in self.timings}

    @property
    def speedups_of_ours(self) -> dict[str, float]:
        """How many times faster the ORT Grad-CAM artifact is than each contestant."""
        return {k: self.ratio(k, OURS) for k in self.timings}

    def targets(self) -> list[TargetCheck]:
        c = self.config
        checks = []
        if c.max_overhead is not None:
            checks.append(
                TargetCheck(c.name, "ORT Grad-CAM / ORT logits-only", self.ratio(OURS), c.max_overhead, "max")
            )
        for other, factor in c.min_speedups:
            checks.append(
                TargetCheck(c.name, f"{CONTESTANTS[other]} / ORT Grad-CAM", self.ratio(other, OURS), factor, "min")
            )
        return checks

    def to_dict(self) -> dict:
        c = self.config
        return {
            "name": c.name,
            "arch": c.arch,
            "layer": c.layer,
            "size": c.size,
            "batch": c.batch,
            "num_classes": c.num_classes,
            "timings_ms": {k: dataclasses.asdict(t) for k, t in self.timings.items()},
            "ratio_to_ort_logits": self.ratios_to_floor,
            "ort_gradcam_speedup_over": self.speedups_of_ours,
            "build_s": self.build_s,
            "export_s": self.export_s,
            "artifact_bytes": self.artifact_bytes,
            "ort_memory_mb": self.memory_mb,
            "max_abs_cam_diff_vs_reference": self.parity,
            "targets": [{**dataclasses.asdict(t), "met": t.met} for t in self.targets()],
        }


@dataclass
class BenchResult:
    """All configurations of one benchmark run, the machine and the settings."""

    machine: dict
    settings: dict
    configs: list[ConfigResult]

    def targets(self) -> list[TargetCheck]:
        return [t for c in self.configs for t in c.targets()]

    def to_dict(self) -> dict:
        return {
            "machine": self.machine,
            "settings": self.settings,
            "contestants": CONTESTANTS,
            "configs": [c.to_dict() for c in self.configs],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_table(self) -> str:
        """Plain-text tables for the terminal."""
        lines = []
        for r in self.configs:
            lines.append(f"{r.config.name}  (batch {r.config.batch}, {r.config.size}x{r.config.size})")
            lines.append(
                f"  {'contestant':40s} {'median ms':>10s} {'IQR ms':>15s} {'/ORT logits':>11s} {'ours faster':>11s}"
            )
            for key, label in CONTESTANTS.items():
                t = r.timings[key]
                iqr = f"{t.q1_ms:.1f}-{t.q3_ms:.1f}"
                lines.append(
                    f"  {label:40s} {t.median_ms:10.1f} {iqr:>15s} {r.ratio(key):10.2f}x {r.ratio(key, OURS):10.2f}x"
                )
            mem = r.memory_mb
            if mem:
                lines.append(
                    f"  ORT peak RSS delta: Grad-CAM {mem[OURS]['peak_mb']:.0f} MB, "
                    f"logits-only {mem[FLOOR]['peak_mb']:.0f} MB"
                )
            lines.append(
                f"  build {r.build_s:.1f} s, ONNX export {r.export_s['onnx']:.1f} s "
                f"({r.artifact_bytes['onnx'] / 1e6:.1f} MB), TorchScript export {r.export_s['torchscript']:.1f} s "
                f"({r.artifact_bytes['torchscript'] / 1e6:.1f} MB)"
            )
            lines.append("")
        checks = self.targets()
        if checks:
            lines.append("targets:")
            for t in checks:
                op = "<=" if t.kind == "max" else ">="
                lines.append(
                    f"  {'met   ' if t.met else 'MISSED'} {t.config}: {t.description} = {t.value:.3f} ({op} {t.bound})"
                )
        return "\n".join(lines)

    def to_markdown(self) -> str:
        return _markdown(self)


# ---------------------------------------------------------------- models


def _build_model(config: BenchConfig, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    if config.arch.startswith("timm:"):
        try:
            import timm
        except ImportError as exc:
            raise GradCAMError(f"configuration {config.name} needs timm; pip install 'gradcam_model[demo]'") from exc
        model = timm.create_model(config.arch.split(":", 1)[1], pretrained=False, num_classes=config.num_classes)
    else:
        import torchvision

        kwargs = {"weights": None, "num_classes": config.num_classes}
        if config.arch in ("googlenet", "inception_v3"):
            kwargs["aux_logits"] = False
        model = torchvision.models.get_model(config.arch, **kwargs)
    return _calibrate(model, config.size, seed)


@torch.no_grad()
def _calibrate(model: nn.Module, size: int, seed: int, batches: int = 2) -> nn.Module:
    """Keep a random model's activations O(1): normal-scale heads, BatchNorm statistics from data.

    Weights do not change what a forward or backward pass costs, but values do where
    they vanish: untouched random MobileNetV3 logits are ~1e-10, and tiny or
    subnormal numbers would make the timing (and the parity figures) meaningless.
    """
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.weight.normal_(0, m.in_features**-0.5, generator=gen)
            if m.bias is not None:
                m.bias.zero_()
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
    model.train()
    for _ in range(batches):
        model(torch.randn(4, 3, size, size, generator=gen))
    return model.eval()


@contextlib.contextmanager
def _quiet():
    """torch.onnx and torch.jit print progress and warn; the benchmark logs instead."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _export_logits_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """The floor: the plain model as ONNX, dynamic batch, same exporter and opset as our artifacts."""
    from .export.onnx import DEFAULT_OPSET

    with _quiet(), torch.inference_mode(False):
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=["image"],
            output_names=["logits"],
            opset_version=DEFAULT_OPSET,
            dynamic_shapes=({0: torch.export.Dim.DYNAMIC},),
            external_data=False,
            optimize=True,
            verbose=False,
        )
    path.write_bytes(program.model_proto.SerializeToString())


def _ort_session(path: Path, threads: int, spinning: bool, device: torch.device):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if device.type == "cuda":
        providers = [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    if device.type == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider":
        # ONNX Runtime falls back to the CPU silently; CPU figures must not pass for GPU ones
        raise GradCAMError(
            f"ONNX Runtime could not start its CUDA provider for {path.name} "
            f"(available: {', '.join(ort.get_available_providers())}); install onnxruntime-gpu "
            "matching this CUDA, or run the benchmark with --device cpu"
        )
    return session


def _ort_runner(session, image: torch.Tensor, output: int, *, bind: bool | None = None) -> Callable[[], object]:
    """One ORT run on ``image`` returning output ``output``.

    On the CPU the input is the numpy view of the tensor (``session.run``, what a
    service does). On a GPU (``bind``, the default there) the input stays in device
    memory, bound by pointer like the torch contestants' input, and the outputs are
    allocated on the same device: the timed call includes no host-device copy. The
    returned OrtValue is copied to the host only for the parity check, after timing.
    """
    if not (image.is_cuda if bind is None else bind):
        array = image.numpy()
        return lambda: session.run(None, {"image": array})[output]
    kind, index = image.device.type, image.device.index or 0
    image = image.contiguous()
    binding = session.io_binding()
    binding.bind_input("image", kind, index, np.float32, list(image.shape), image.data_ptr())
    for out in session.get_outputs():
        binding.bind_output(out.name, kind, index)

    def run(_bound=image):  # holds the tensor whose memory the binding points into
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return binding.get_outputs()[output]

    return run


# ---------------------------------------------------------------- memory


def ort_peak_memory(path: str, shape: list[int], threads: int, spinning: bool, runs: int) -> dict:
    """Peak resident memory that one ONNX Runtime session adds to a fresh process.

    Runs in its own interpreter (see :func:`_measure_memory`) that imports only
    numpy and onnxruntime. The figures are growth of the process's resident-set
    high-water mark from the point where the libraries are loaded and the input
    exists: after the session is created (``load_mb``: the model file, weights, graph
    optimization and pre-packed kernels, transient copies included) and after
    ``runs`` runs (``peak_mb``: that or the run's working set with ONNX Runtime's
    arena for intermediate tensors at this batch size, whichever is higher);
    ``resident_mb`` is what stays resident after the runs. On Linux the mark
    is ``VmHWM`` from ``/proc/self/status``: ``getrusage``'s ``ru_maxrss`` keeps the
    parent's mark across the fork and exec that started the probe (it read 1.3 GB
    before the session existed), so it cannot measure a child of a big process.
    """
    import resource
    import sys

    import numpy as np
    import onnxruntime as ort

    def status_mb(key):
        try:
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith(key + ":"):
                        return int(line.split()[1]) / 1024  # kB
        except OSError:
            pass
        return None

    def high_water_mb():
        mark = status_mb("VmHWM")
        if mark is not None:
            return mark
        scale = 2**20 if sys.platform == "darwin" else 2**10  # ru_maxrss: bytes on macOS, KiB elsewhere
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale

    image = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    base, resident = high_water_mb(), status_mb("VmRSS")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
    loaded = high_water_mb()
    name = session.get_inputs()[0].name
    for _ in range(runs):
        session.run(None, {name: image})
    figures = {"baseline_mb": base, "load_mb": loaded - base, "peak_mb": high_water_mb() - base}
    if resident is not None:  # what stays resident after the runs (Linux only)
        figures["resident_mb"] = status_mb("VmRSS") - resident
    return figures


def _measure_memory(path: Path, shape: Sequence[int], threads: int, spinning: bool, runs: int) -> dict:
    """Run :func:`ort_peak_memory` in a fresh interpreter (no torch in it) and return its figures."""
    source = inspect.getsource(ort_peak_memory)
    call = "\nimport json, sys\nprint(json.dumps(ort_peak_memory(*json.loads(sys.argv[1]))))\n"
    argument = json.dumps([str(path), list(shape), threads, spinning, runs])
    done = subprocess.run(
        [sys.executable, "-c", source + call, argument], capture_output=True, text=True, timeout=600, check=False
    )
    if done.returncode != 0:
        raise GradCAMError(f"the memory probe for {path.name} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- contestants


def _contestants(
    config: BenchConfig,
    model: nn.Module,
    wrapper,
    paths: dict[str, Path],
    image: torch.Tensor,
    *,
    threads: int,
    spinning: bool,
    stack: contextlib.ExitStack,
) -> dict[str, Callable[[], object]]:
    """Zero-argument callables, one per contestant, each returning its map (or logits)."""
    from .runtime.explainer import TorchScriptExplainer
    from .wrapper import reference_cam

    try:
        from captum.attr import LayerAttribution, LayerGradCam
        from pytorch_grad_cam import GradCAM
    except ImportError as exc:
        raise GradCAMError(
            f"the benchmark compares against pytorch-grad-cam and Captum; pip install 'gradcam_model[bench]' ({exc})"
        ) from exc

    device = image.device
    ort_logits = _ort_session(paths["onnx_logits"], threads, spinning, device)
    ort_gradcam = _ort_session(paths["onnx"], threads, spinning, device)
    scripted = TorchScriptExplainer(paths["torchscript"], device=str(device)).module
    size = tuple(image.shape[2:])

    def torch_logits():
        with torch.inference_mode():
            return model(image)

    def gradcam_eager():
        with torch.inference_mode():
            return wrapper(image)[4][:, 0]

    def torchscript():
        with torch.inference_mode():
            return scripted(image)[4][:, 0]

    # pytorch-grad-cam keeps its hooks on the model it is given: a copy of its own,
    # so they never run inside the other contestants' forward passes
    pgc_model = copy.deepcopy(model)
    pgc = GradCAM(model=pgc_model, target_layers=[_layer(pgc_model, config.layer)])
    # not `with GradCAM(...)`: its __exit__ swallows IndexError
    stack.callback(pgc.activations_and_grads.release)

    captum_model = copy.deepcopy(model)
    captum = LayerGradCam(captum_model, _layer(captum_model, config.layer))
    with torch.no_grad():  # not inference_mode: Captum's autograd would refuse the inference tensor
        # Captum needs the class up front: it gets the top class for free (computed
        # here, outside the timed region), which can only flatter Captum
        top = model(image).argmax(dim=1)

    def captum_run():
        maps = captum.attribute(image, target=top, relu_attributions=True)
        return LayerAttribution.interpolate(maps, size, interpolate_mode="bilinear")[:, 0]

    return {
        "torch_logits": torch_logits,
        "reference_cam": lambda: reference_cam(model, config.layer, image)[:, 0],
        "gradcam_eager": gradcam_eager,
        "ort_logits": _ort_runner(ort_logits, image, 0),
        "ort_gradcam": _ort_runner(ort_gradcam, image, 4),
        "torchscript": torchscript,
        "pytorch_grad_cam": lambda: pgc(input_tensor=image, targets=None),
        "captum": captum_run,
    }


def _layer(model: nn.Module, name: str) -> nn.Module:
    from .layers import resolve_layer

    return resolve_layer(model, name)


def _as_map(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        array = value.detach().cpu().numpy()
    elif hasattr(value, "numpy"):  # an OrtValue in device memory
        array = value.numpy()
    else:
        array = np.asarray(value)
    if array.ndim == 4:  # [N, 1, H, W] from ONNX Runtime
        array = array[:, 0]
    return array.astype(np.float64)


def _normalized(maps: np.ndarray) -> np.ndarray:
    """Min-max normalize each map (Captum returns raw ReLU'd maps)."""
    flat = maps.reshape(maps.shape[0], -1)
    low, high = flat.min(axis=1, keepdims=True), flat.max(axis=1, keepdims=True)
    span = np.where(high > low, high - low, 1.0)
    return ((flat - low) / span * (high > low)).reshape(maps.shape)


def _time_interleaved(
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


def _bench_config(
    config: BenchConfig,
    workdir: Path,
    *,
    threads: int,
    warmup: int,
    repeats: int,
    memory_runs: int,
    spinning: bool,
    device: torch.device,
) -> ConfigResult:
    from .export import export_onnx, export_torchscript
    from .wrapper import GradCAMModel

    model = _build_model(config)
    gen = torch.Generator().manual_seed(1)
    image = torch.randn(config.batch, 3, config.size, config.size, generator=gen)
    example = torch.randn(2, 3, config.size, config.size, generator=gen)

    started = time.perf_counter()
    wrapper = GradCAMModel(model, config.layer, example_input=example, architecture=config.arch)
    build_s = time.perf_counter() - started
    paths = {
        "onnx": workdir / f"{config.name}.onnx",
        "torchscript": workdir / f"{config.name}.pt",
        "onnx_logits": workdir / f"{config.name}.logits.onnx",
    }
    export_s = {}
    started = time.perf_counter()
    export_onnx(wrapper, paths["onnx"], overwrite=True)
    export_s["onnx"] = time.perf_counter() - started
    started = time.perf_counter()
    export_torchscript(wrapper, paths["torchscript"], overwrite=True)
    export_s["torchscript"] = time.perf_counter() - started
    started = time.perf_counter()
    _export_logits_onnx(model, example, paths["onnx_logits"])
    export_s["onnx_logits"] = time.perf_counter() - started
    sizes = {k: p.stat().st_size for k, p in paths.items()}
    log.info("%s: built in %.1f s, exports %s", config.name, build_s, {k: round(v, 1) for k, v in export_s.items()})

    # traced and exported on the CPU (artifacts are device-neutral), timed on `device`
    model, wrapper, image = model.to(device), wrapper.to(device), image.to(device)
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with contextlib.ExitStack() as stack:
        runners = _contestants(config, model, wrapper, paths, image, threads=threads, spinning=spinning, stack=stack)
        samples, outputs = _time_interleaved(runners, warmup=warmup, repeats=repeats, synchronize=synchronize)
    timings = {k: Timing.from_seconds(samples[k]) for k in CONTESTANTS}

    reference = _as_map(outputs["reference_cam"])
    parity = {}
    for key in _MAP_CONTESTANTS:
        got = _as_map(outputs[key])
        if key == "captum":
            got = _normalized(got)
        parity[key] = float(np.abs(got - reference).max())

    memory = {}
    if memory_runs > 0 and device.type == "cpu":  # the probe measures host memory of CPU sessions
        shape = [config.batch, 3, config.size, config.size]
        for key, path_key in ((OURS, "onnx"), (FLOOR, "onnx_logits")):
            memory[key] = _measure_memory(paths[path_key], shape, threads, spinning, memory_runs)
    return ConfigResult(config, timings, build_s, export_s, sizes, memory, parity)


# ---------------------------------------------------------------- library entry


def machine_info(threads: int, device: torch.device | None = None) -> dict:
    """The machine and library versions a result was measured with."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    versions = {}
    for dist in (
        "gradcam_model",
        "torch",
        "torchvision",
        "onnx",
        "onnxscript",
        "onnxruntime-gpu",
        "onnxruntime",
        "grad-cam",
        "captum",
        "timm",
        "numpy",
    ):
        with contextlib.suppress(importlib_metadata.PackageNotFoundError):
            versions[dist] = importlib_metadata.version(dist)
    info = {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "threads": threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }
    if device is not None and device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    with contextlib.suppress(OSError, AttributeError):
        info["load_average_at_start"] = [round(v, 2) for v in os.getloadavg()]
    return info


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/None: the first CUDA GPU when torch sees one, else the CPU."""
    if device is None or device == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise GradCAMError(f"device {device!r} asked for, but torch sees no CUDA GPU; use --device cpu")
        index = resolved.index or 0
        if index >= torch.cuda.device_count():
            raise GradCAMError(f"device {device!r} asked for, but torch sees {torch.cuda.device_count()} GPU(s)")
        resolved = torch.device("cuda", index)
    return resolved


def _default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


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
    repeats = repeats if repeats is not None else (1 if quick else 15)
    warmup = warmup if warmup is not None else (1 if quick else 3)
    memory_runs = memory_runs if memory_runs is not None else (1 if quick else 3)
    threads = threads if threads is not None else _default_threads()
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
    device = resolve_device(device)
    settings = {
        "quick": quick,
        "repeats": repeats,
        "warmup": warmup,
        "threads": threads,
        "memory_runs": memory_runs,
        "ort_spinning": ort_spinning,
        "device": str(device),
        # libgomp's idle-thread policy shapes the eager torch contestants; recorded, not changed
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset (libgomp default)"),
        "configs": [c.name for c in configs],
    }
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
        for i, config in enumerate(configs, 1):
            started = time.perf_counter()
            log.info("[%d/%d] %s", i, len(configs), config.name)
            result = _bench_config(
                config,
                directory,
                threads=threads,
                warmup=warmup,
                repeats=repeats,
                memory_runs=memory_runs,
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


# ---------------------------------------------------------------- markdown


def _markdown(result: BenchResult) -> str:
    m, s = result.machine, result.settings
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    out = [
        "# Benchmarks",
        "",
        "The explanation at the cost of plain inference: the ONNX Grad-CAM artifact (logits *and* maps",
        "from one graph) against the same model exported for logits only, and against pytorch-grad-cam",
        "and Captum, measured side by side.",
        "",
        "Generated by `"
        + (f"OMP_WAIT_POLICY={s['omp_wait_policy']} " if not s["omp_wait_policy"].startswith("unset") else "")
        + "gradcam bench"
        + (" --quick" if s["quick"] else "")
        + " --markdown docs/benchmarks.md` (`gradcam_model.bench`). Do not edit by hand; rerun it.",
        "",
        "## Machine",
        "",
        *([f"- GPU: {m['gpu']} (CUDA {m['cuda']}); contestants run on {s['device']}"] if "gpu" in m else []),
        f"- CPU: {m['cpu']}; {m['logical_cores']} logical cores, {m['usable_cores']} usable",
        f"- threads: {m['threads']} (torch `set_num_threads` and ONNX Runtime `intra_op_num_threads` alike)",
        f"- {m['platform']}, Python {m['python']}",
        f"- {versions}",
    ]
    if "load_average_at_start" in m:
        out.append(
            f"- load average at start {m['load_average_at_start']}, at end {m.get('load_average_at_end', '?')}"
            " (a shared machine: figures from one run are comparable with each other, not across runs)"
        )
    out += [
        "",
        "## Method",
        "",
        f"- One process per run; per configuration every contestant runs on the same random input after "
        f"{s['warmup']} warm-up round(s), then {s['repeats']} timed round(s) interleaved (the order rotates "
        "each round). Figures are **medians** (IQR beside them); ratios divide medians of the same run.",
        "- Models are randomly initialized (weights do not change the cost), with normal-scale heads and "
        "BatchNorm statistics calibrated on random batches so activations stay O(1). efficientnet_lite0 "
        "comes from timm.",
        "- **ORT logits-only** is the floor: the plain model exported with `torch.onnx.export(dynamo=True)`, "
        "dynamic batch, same opset, run by ONNX Runtime with the same session options as our artifact.",
        "- pytorch-grad-cam gets its own copy of the model (its hooks stay registered). Captum is handed the "
        "top class computed outside the timed region, which can only flatter it; its maps are ReLU'd "
        "(`relu_attributions=True`) and upsampled with `LayerAttribution.interpolate(..., 'bilinear')`.",
        "- ONNX Runtime: "
        + (
            "CUDA provider, input and outputs bound in device memory (no host copies in the timed call), "
            "every timed call ends with `torch.cuda.synchronize()`; "
            if s.get("device", "cpu").startswith("cuda")
            else "CPU provider, "
        )
        + "`inter_op_num_threads=1`, idle-thread spinning "
        + ("on" if s["ort_spinning"] else "off (interleaved sessions would otherwise steal each other's cores)")
        + ", graph optimizations at their default (all). torch runs with `OMP_WAIT_POLICY` "
        + f"{s['omp_wait_policy']}.",
        (
            "- Memory: each ONNX Runtime artifact in a fresh interpreter that imports only numpy and "
            "onnxruntime (not torch). *Peak* is the growth of the process's resident high-water mark (`VmHWM`) "
            f"over session creation and {s['memory_runs']} run(s) at the benchmark batch: the model file, "
            "weights, graph optimization and pre-packed kernels (transient copies included), or the run's "
            "working set with the arena for intermediate tensors, whichever is higher; *load* is the same "
            "mark right after session creation; *resident* is what stays resident after the runs. It is "
            "memory as the OS sees it, not ONNX Runtime's own accounting. (`getrusage`'s `ru_maxrss` cannot "
            "be used: Linux carries the parent's mark across the fork/exec that starts the probe.)"
            if not s.get("device", "cpu").startswith("cuda")
            else "- Memory: not measured on the GPU (the probe reads the host memory of CPU sessions)."
        ),
        "- Parity: max |map - reference_cam| over the batch (maps min-max normalized to [0, 1]), from the "
        "last timed call of each contestant.",
        "- Reading the comparisons: pytorch-grad-cam calls `loss.backward()`, a full backward pass with every "
        "parameter gradient; Captum differentiates only from the logits back to the layer, so at a last-stage "
        "layer it costs about one eager forward pass, and *ORT Grad-CAM vs Captum* there is mostly ONNX "
        "Runtime's forward speed against eager torch's. The *Grad-CAM / logits* column is what the "
        "explanation adds to inference in the same runtime.",
        "",
        "## Summary",
        "",
        "| configuration | ORT logits ms | ORT Grad-CAM ms | Grad-CAM / logits | TorchScript / logits "
        "| vs pytorch-grad-cam | vs Captum |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result.configs:
        out.append(
            f"| {r.config.name} | {r.timings[FLOOR].median_ms:.1f} | {r.timings[OURS].median_ms:.1f} "
            f"| {r.ratio(OURS):.2f}x | {r.ratio('torchscript'):.2f}x "
            f"| {r.ratio('pytorch_grad_cam', OURS):.2f}x faster | {r.ratio('captum', OURS):.2f}x faster |"
        )
    checks = result.targets()
    if checks:
        out += ["", "## Targets", "", "| configuration | measure | value | target | |", "|---|---|---:|---:|---|"]
        for t in checks:
            op = "<=" if t.kind == "max" else ">="
            out.append(
                f"| {t.config} | {t.description} | {t.value:.3f} | {op} {t.bound} "
                f"| {'met' if t.met else '**missed**'} |"
            )
    out += ["", "## All contestants", ""]
    for r in result.configs:
        c = r.config
        out += [
            f"### {c.name}",
            "",
            f"{c.arch.split(':')[-1]}, target layer `{c.layer}`, {c.size}x{c.size}, batch {c.batch}, "
            f"{c.num_classes} classes.",
            "",
            "| contestant | median ms | IQR ms | / ORT logits | ORT Grad-CAM faster by | max abs map diff |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for key, label in CONTESTANTS.items():
            t = r.timings[key]
            diff = f"{r.parity[key]:.1e}" if key in r.parity else ""
            out.append(
                f"| {label} | {t.median_ms:.1f} | {t.q1_ms:.1f}-{t.q3_ms:.1f} | {r.ratio(key):.2f}x "
                f"| {r.ratio(key, OURS):.2f}x | {diff} |"
            )
        out.append("")
    out += [
        "## Export and size",
        "",
        "| configuration | trace s | ONNX export s | TorchScript export s | logits ONNX export s "
        "| ONNX MB | TorchScript MB | logits ONNX MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result.configs:
        b, e = r.artifact_bytes, r.export_s
        out.append(
            f"| {r.config.name} | {r.build_s:.1f} | {e['onnx']:.1f} | {e['torchscript']:.1f} | {e['onnx_logits']:.1f} "
            f"| {b['onnx'] / 1e6:.1f} | {b['torchscript'] / 1e6:.1f} | {b['onnx_logits'] / 1e6:.1f} |"
        )
    measured = [r for r in result.configs if r.memory_mb]
    if measured:
        out += [
            "",
            "## ONNX Runtime memory (MB)",
            "",
            "| configuration | Grad-CAM peak | Grad-CAM load | Grad-CAM resident | logits peak | logits load "
            "| logits resident | peak ratio |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in measured:
            ours, floor = r.memory_mb[OURS], r.memory_mb[FLOOR]
            cells = [
                f"{fig[key]:.0f}" if key in fig else "n/a"
                for fig in (ours, floor)
                for key in ("peak_mb", "load_mb", "resident_mb")
            ]
            ratio = ours["peak_mb"] / floor["peak_mb"] if floor["peak_mb"] > 0 else float("nan")
            out.append(f"| {r.config.name} | {' | '.join(cells)} | {ratio:.2f}x |")
    out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------- CLI


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    return parse


def _device_name(text: str) -> str:
    if re.fullmatch(r"auto|cpu|cuda(:\d+)?", text.strip()) is None:
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    return text.strip()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``gradcam bench`` options."""
    names = ", ".join(c.name for c in (*CONFIGS, *QUICK_CONFIGS))
    parser.add_argument(
        "--config",
        action="append",
        metavar="NAME",
        help=f"run only this configuration (repeatable; shell patterns work). Known: {names}",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 64 px, batch 2, 1 repetition (resnet18 unless --config)"
    )
    parser.add_argument(
        "--repeats", type=_int_at_least(1), default=None, help="timed interleaved rounds (default 15, quick 1)"
    )
    parser.add_argument(
        "--warmup", type=_int_at_least(0), default=None, help="untimed rounds first (default 3, quick 1)"
    )
    parser.add_argument(
        "--threads",
        type=_int_at_least(1),
        default=None,
        help="threads for torch and ONNX Runtime (default: usable cores)",
    )
    parser.add_argument(
        "--memory-runs",
        type=_int_at_least(0),
        default=None,
        help="runs per ORT memory probe; 0 skips them (default 3, quick 1)",
    )
    parser.add_argument(
        "--ort-spinning", action="store_true", help="let ONNX Runtime's idle threads spin (off: fairer interleaving)"
    )
    parser.add_argument(
        "--device",
        default="auto",
        type=_device_name,
        metavar="D",
        help="auto (a CUDA GPU when torch sees one, else the CPU), cpu, cuda or cuda:N",
    )
    parser.add_argument("--workdir", metavar="DIR", help="keep the exported artifacts in DIR")
    parser.add_argument("--json", metavar="FILE", help="write the full results as JSON")
    parser.add_argument("--markdown", metavar="FILE", help="write the report as Markdown (docs/benchmarks.md)")
    parser.add_argument(
        "--check-targets", action="store_true", help="exit with status 1 when a target of the issue is missed"
    )


def run(args: argparse.Namespace) -> int:
    """Run ``gradcam bench``; print the tables; return the exit status."""
    configs = select_configs(args.config, quick=args.quick)
    device = resolve_device(args.device)
    print(f"benchmarking {len(configs)} configuration(s): {', '.join(c.name for c in configs)}", flush=True)
    result = run_benchmark(
        configs,
        quick=args.quick,
        repeats=args.repeats,
        warmup=args.warmup,
        threads=args.threads,
        memory_runs=args.memory_runs,
        ort_spinning=args.ort_spinning,
        workdir=args.workdir,
        progress=lambda line: print(line, flush=True),
        device=device,
    )
    print()
    print(result.to_table())
    for option, text in ((args.json, result.to_json()), (args.markdown, result.to_markdown())):
        if option:
            path = Path(option)
            path.parent.mkdir(parents=True, exist_ok=True)
            kept = _pipeline_section(path) if option == args.markdown else None
            from .bench_ray import section_of
            from .bench_ray import update_markdown as update_ray

            kept_ray = section_of(path) if option == args.markdown else None
            path.write_text(text + ("\n" if not text.endswith("\n") else ""))
            if kept:  # `gradcam bench --pipeline` owns that section of the same file
                from .bench_pipeline import update_markdown

                update_markdown(path, kept)
            if kept_ray:  # and `gradcam bench --ray` this one
                update_ray(path, kept_ray)
            print(f"wrote {path}")
    missed = [t for t in result.targets() if not t.met]
    return 1 if args.check_targets and missed else 0


def _pipeline_section(path: Path) -> str | None:
    """The ``gradcam bench --pipeline`` section already in ``path``, if any."""
    from .bench_pipeline import BEGIN, END

    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text:
        return BEGIN + text.split(BEGIN, 1)[1].split(END, 1)[0] + END
    return None
