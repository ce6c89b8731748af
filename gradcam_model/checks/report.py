"""What a parity check found: each output's difference and limit, the report, its JSON document."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

from ..errors import ParityError
from .maskflips import MapDiagnosis
from .tolerances import Tolerance

__all__ = ["OutputDiff", "ParityReport", "assert_parity", "parity_document"]


@dataclass(frozen=True)
class OutputDiff:
    name: str
    max_abs: float
    max_rel: float
    tolerance: float
    measure: str  # which of max_abs / max_rel is held to the limit
    noise: float  # the same measure for eager float32 vs float64 (maps: with float64's masks, see validate)
    limit: float  # max(tolerance, noise_factor * noise)
    ok: bool
    verdict: str  # ok, explained (maps beyond the limit that mask flips reproduce), FAIL, not compared


@dataclass
class ParityReport:
    """Differences between an artifact and ``reference_cam`` over several input batches."""

    artifact: str
    format: str
    batches: list[tuple[int, ...]] = field(default_factory=list)
    outputs: dict[str, OutputDiff] = field(default_factory=dict)
    class_agreement: float = 1.0
    tolerance: Tolerance = field(default_factory=Tolerance)
    cam_signal: float = 0.0  # max reference cam value: a flat (all-zero) map would prove nothing
    structured_maps: float = 0.0  # fraction of compared reference maps that are not flat
    near_ties: int = 0  # samples left out because eager float32 and float64 pick different classes
    maps: list[MapDiagnosis] = field(default_factory=list)  # every map beyond its limit, diagnosed
    runtime: dict = field(default_factory=dict)  # what ran the artifact: name, version, device, settings
    per_batch: list[dict] = field(default_factory=list)  # each batch's worst differences (for --junit)

    @property
    def ok(self) -> bool:
        return all(d.ok for d in self.outputs.values()) and self.class_agreement >= self.tolerance.min_class_agreement

    def failures(self) -> list[str]:
        lines = [
            f"{d.name}: not compared (no image's explained classes agree with the reference)"
            if math.isnan(d.max_abs)
            else f"{d.name}: {d.measure} {getattr(d, d.measure):.3g} > limit {d.limit:.3g}"
            + (
                f" (eager float32 itself is off by {d.noise:.3g})"
                if d.noise * self.tolerance.noise_factor > d.tolerance
                else ""
            )
            for d in self.outputs.values()
            if not d.ok
        ]
        if lines and "cam" in self.outputs and not self.outputs["cam"].ok:
            lines += [f"cam: {m.describe()}" for m in self.maps if not m.explained]
        if self.class_agreement < self.tolerance.min_class_agreement:
            lines.append(
                f"class_index: agreement {self.class_agreement:.3f} < {self.tolerance.min_class_agreement:.3f}"
            )
        return lines

    def to_dict(self) -> dict:
        return {
            "artifact": self.artifact,
            "format": self.format,
            "runtime": self.runtime,
            "ok": self.ok,
            "batches": [list(b) for b in self.batches],
            "class_agreement": self.class_agreement,
            "near_ties": self.near_ties,
            "cam_signal": self.cam_signal,
            "structured_maps": self.structured_maps,
            "outputs": {k: _json_safe(asdict(v)) for k, v in self.outputs.items()},
            "maps": [asdict(m) for m in self.maps],
            "tolerance": asdict(self.tolerance),
        }

    def table(self) -> str:
        rows = [f"{'output':<14}{'max abs':>12}{'max rel':>12}{'fp32 noise':>12}{'limit':>12}  result"]
        for d in self.outputs.values():
            if math.isnan(d.max_abs):
                rows.append(f"{d.name:<14}{'-':>12}{'-':>12}{'-':>12}{d.limit:>12.3g}  not compared")
                continue
            rows.append(
                f"{d.name:<14}{d.max_abs:>12.3g}{d.max_rel:>12.3g}{d.noise:>12.3g}{d.limit:>12.3g}  {d.verdict}"
            )
        rows.append(f"{'class agreement':<26}{self.class_agreement:>12.3f}")
        rows += [f"{'explained' if m.explained else 'FAIL'}: {m.describe()}" for m in self.maps]
        return "\n".join(rows)


def _json_safe(record: dict) -> dict:
    """NaN (an output that was not compared) becomes null: JSON has no NaN."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in record.items()}


def assert_parity(report: ParityReport) -> ParityReport:
    """Raise ``ParityError`` listing every output beyond tolerance; return the report otherwise."""
    if not report.ok:
        lines = "\n".join(f"  {line}" for line in report.failures())
        raise ParityError(f"{report.artifact} differs from the eager reference:\n{lines}")
    return report


def parity_document(reports) -> str:
    """The ``parity.json`` document for several reports: overall ``ok`` and one record per artifact."""
    reports = list(reports)
    return json.dumps({"ok": all(r.ok for r in reports), "artifacts": [r.to_dict() for r in reports]}, indent=2) + "\n"
