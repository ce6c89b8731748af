"""What a benchmark run measured: timings, per-configuration results, targets met or missed."""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from .configs import BenchConfig

__all__ = [
    "BenchResult",
    "CONTESTANTS",
    "ConfigResult",
    "EXPORT_RATIO",
    "FLOOR",
    "MAP_CONTESTANTS",
    "OURS",
    "TargetCheck",
    "Timing",
]

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
EXPORT_RATIO = "(build + ONNX export) / logits-only ONNX export"
# contestants that produce a map comparable with reference_cam's
MAP_CONTESTANTS = ("gradcam_eager", "ort_gradcam", "torchscript", "pytorch_grad_cam", "captum")


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
    """One performance target of a configuration, checked against measured medians."""

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
    build_s: float  # GradCAMModel construction: layer probe, tracing, the dynamic-size check
    export_s: dict[str, float]  # per artifact; "onnx_logits" is the plain logits-only export
    artifact_bytes: dict[str, int]
    validate_s: float  # gradcam_model.validate of the ONNX artifact against the eager model
    validation: str = "ok"  # its verdict on the maps: ok, explained (mask flips), FAIL
    memory_mb: dict[str, dict[str, float]] = field(default_factory=dict)
    parity: dict[str, float] = field(default_factory=dict)

    def ratio(self, contestant: str, baseline: str = FLOOR) -> float:
        """Median of ``contestant`` over the median of ``baseline`` (same run)."""
        return self.timings[contestant].median_ms / self.timings[baseline].median_ms

    @property
    def export_ratio(self) -> float:
        """(build + ONNX export of the Grad-CAM artifact) / the plain logits-only ONNX export."""
        return (self.build_s + self.export_s["onnx"]) / self.export_s["onnx_logits"]

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
        if c.max_export_ratio is not None:
            checks.append(TargetCheck(c.name, EXPORT_RATIO, self.export_ratio, c.max_export_ratio, "max"))
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
            "validate_s": self.validate_s,
            "validation": self.validation,
            "export_ratio": self.export_ratio,
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
                f"({r.artifact_bytes['onnx'] / 1e6:.1f} MB), validation {r.validate_s:.1f} s ({r.validation}), "
                f"TorchScript export {r.export_s['torchscript']:.1f} s "
                f"({r.artifact_bytes['torchscript'] / 1e6:.1f} MB)"
            )
            lines.append(
                f"  logits-only ONNX export {r.export_s['onnx_logits']:.1f} s: "
                f"(build + ONNX export) / it = {r.export_ratio:.2f}x"
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
        from .report import markdown

        return markdown(self)
