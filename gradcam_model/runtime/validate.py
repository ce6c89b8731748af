"""Parity of an artifact with the eager reference: a report, and a check that raises."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from ..errors import ParityError
from ..wrapper import OUTPUT_NAMES, reference_cam
from .explainer import Explainer, load_explainer

__all__ = ["Tolerance", "TOLERANCES", "tolerance_for", "OutputDiff", "ParityReport", "validate", "assert_parity"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tolerance:
    """How far an artifact may stray from the eager reference."""

    logits_rtol: float = 1e-4  # max |a - b| / max |b|
    probabilities_atol: float = 1e-5
    score_atol: float = 1e-5
    cam_atol: float = 1e-4
    min_class_agreement: float = 1.0


# The one place tolerances live. Both runtimes reorder float32 reductions (ORT's
# NCHWc convolutions, libtorch's oneDNN paths): measured diffs are ~1e-6 on cams.
TOLERANCES: dict[str, Tolerance] = {"onnx": Tolerance(), "torchscript": Tolerance()}


def tolerance_for(fmt: str, **overrides: float) -> Tolerance:
    """The tolerance for artifact format ``fmt``, with any field overridden (CLI: --cam-atol ...)."""
    base = TOLERANCES.get(fmt, Tolerance())
    return Tolerance(**{**asdict(base), **{k: v for k, v in overrides.items() if v is not None}})


@dataclass(frozen=True)
class OutputDiff:
    name: str
    max_abs: float
    max_rel: float
    tolerance: float
    measure: str  # which of max_abs / max_rel is held to the tolerance
    ok: bool


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

    @property
    def ok(self) -> bool:
        return all(d.ok for d in self.outputs.values()) and self.class_agreement >= self.tolerance.min_class_agreement

    def failures(self) -> list[str]:
        lines = [
            f"{d.name}: {d.measure} {getattr(d, d.measure):.3g} > tolerance {d.tolerance:.3g}"
            for d in self.outputs.values()
            if not d.ok
        ]
        if self.class_agreement < self.tolerance.min_class_agreement:
            lines.append(
                f"class_index: agreement {self.class_agreement:.3f} < {self.tolerance.min_class_agreement:.3f}"
            )
        return lines

    def to_dict(self) -> dict:
        return {
            "artifact": self.artifact,
            "format": self.format,
            "ok": self.ok,
            "batches": [list(b) for b in self.batches],
            "class_agreement": self.class_agreement,
            "cam_signal": self.cam_signal,
            "outputs": {k: asdict(v) for k, v in self.outputs.items()},
            "tolerance": asdict(self.tolerance),
        }

    def table(self) -> str:
        rows = [f"{'output':<14}{'max abs':>12}{'max rel':>12}{'tolerance':>12}  result"]
        for d in self.outputs.values():
            rows.append(
                f"{d.name:<14}{d.max_abs:>12.3g}{d.max_rel:>12.3g}{d.tolerance:>12.3g}  {'ok' if d.ok else 'FAIL'}"
            )
        rows.append(f"{'class agreement':<26}{self.class_agreement:>12.3f}")
        return "\n".join(rows)


def validate(
    artifact: str | os.PathLike | Explainer,
    model: nn.Module,
    *,
    inputs=None,
    batch_sizes: tuple[int, ...] = (1, 3),
    seed: int = 0,
    tolerance: Tolerance | None = None,
) -> ParityReport:
    """Compare an artifact with ``reference_cam`` on ``model`` and report every difference.

    Runs random normalized images at each of ``batch_sizes`` (they should differ from
    the export example's batch of 2; for artifacts with dynamic height/width the last
    batch also uses another spatial size), plus the caller's ``inputs`` if given
    (``[N, C, H, W]`` array or tensor). Artifacts with a class input get random
    classes, ``-1`` included. Never raises on mismatch: see :func:`assert_parity`.
    """
    explainer = artifact if isinstance(artifact, Explainer) else load_explainer(artifact, device="cpu")
    meta = explainer.metadata
    tol = tolerance or tolerance_for(meta.format)
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    batches = []
    for i, n in enumerate(batch_sizes):
        h, w = meta.input_size or meta.example_size
        if meta.input_size is None and i == len(batch_sizes) - 1:
            h, w = h + 32, w + 16
        batches.append(torch.randn(n, meta.in_channels, h, w, generator=gen))
    if inputs is not None:
        batches.append(torch.as_tensor(np.asarray(inputs, dtype=np.float32)))
    worst = {name: [0.0, 0.0] for name in OUTPUT_NAMES}
    agree = total = 0
    signal = 0.0
    for image in batches:
        classes = None
        if meta.class_input:
            classes = torch.randint(-1, meta.num_classes, (image.shape[0],), generator=gen)
            classes[0] = -1
        got = explainer(image, None if classes is None else classes.numpy()).outputs()
        want = reference_cam(
            model,
            meta.target_layer,
            image.to(device),
            None if classes is None else classes.to(device),
            meta.method,
            top_k=meta.top_k,
            upsample=meta.upsample,
            normalize=meta.normalize,
            return_all=True,
        )
        want = [w.cpu().numpy() for w in want]
        same = (got[2] == want[2]).all(axis=1)
        agree += int(same.sum())
        total += len(same)
        signal = max(signal, float(want[4].max()))
        for name, a, b in zip(OUTPUT_NAMES, got, want, strict=True):
            if name == "class_index":
                continue
            if name == "cam":  # maps of different classes are not comparable
                a, b = a[same], b[same]
            if a.size == 0:
                continue
            diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
            scale = float(np.abs(b).max())
            worst[name][0] = max(worst[name][0], float(diff.max()))
            worst[name][1] = max(worst[name][1], float(diff.max()) / scale if scale > 0 else float(diff.max()))
    report = ParityReport(
        artifact=str(explainer.path),
        format=meta.format,
        batches=[tuple(b.shape) for b in batches],
        class_agreement=agree / total if total else 1.0,
        tolerance=tol,
        cam_signal=signal,
    )
    limits = {
        "logits": (tol.logits_rtol, "max_rel"),
        "probabilities": (tol.probabilities_atol, "max_abs"),
        "score": (tol.score_atol, "max_abs"),
        "cam": (tol.cam_atol, "max_abs"),
    }
    for name, (limit, measure) in limits.items():
        max_abs, max_rel = worst[name]
        value = max_abs if measure == "max_abs" else max_rel
        report.outputs[name] = OutputDiff(name, max_abs, max_rel, limit, measure, value <= limit)
    log.info("parity of %s: %s", explainer.path, "ok" if report.ok else "; ".join(report.failures()))
    return report


def assert_parity(report: ParityReport) -> ParityReport:
    """Raise ``ParityError`` listing every output beyond tolerance; return the report otherwise."""
    if not report.ok:
        lines = "\n".join(f"  {line}" for line in report.failures())
        raise ParityError(f"{report.artifact} differs from the eager reference:\n{lines}")
    return report
