"""Parity of an artifact with the eager reference (build side: needs torch and the trained model)."""

from __future__ import annotations

import copy
import logging
import math
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from .contract import OUTPUT_NAMES
from .errors import ParityError
from .runtime.explainer import Explainer, load_explainer
from .tolerances import TOLERANCES, Tolerance, tolerance_for
from .wrapper import reference_cam

__all__ = [
    "Tolerance",
    "TOLERANCES",
    "tolerance_for",
    "OutputDiff",
    "ParityReport",
    "validate",
    "assert_parity",
    "parity_document",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutputDiff:
    name: str
    max_abs: float
    max_rel: float
    tolerance: float
    measure: str  # which of max_abs / max_rel is held to the limit
    noise: float  # the same measure for eager float32 vs float64
    limit: float  # max(tolerance, noise_factor * noise)
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
    structured_maps: float = 0.0  # fraction of compared reference maps that are not flat
    near_ties: int = 0  # samples left out because eager float32 and float64 pick different classes

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
            "near_ties": self.near_ties,
            "cam_signal": self.cam_signal,
            "structured_maps": self.structured_maps,
            "outputs": {k: _json_safe(asdict(v)) for k, v in self.outputs.items()},
            "tolerance": asdict(self.tolerance),
        }

    def table(self) -> str:
        rows = [f"{'output':<14}{'max abs':>12}{'max rel':>12}{'fp32 noise':>12}{'limit':>12}  result"]
        for d in self.outputs.values():
            if math.isnan(d.max_abs):
                rows.append(f"{d.name:<14}{'-':>12}{'-':>12}{'-':>12}{d.limit:>12.3g}  not compared")
                continue
            rows.append(
                f"{d.name:<14}{d.max_abs:>12.3g}{d.max_rel:>12.3g}{d.noise:>12.3g}{d.limit:>12.3g}  "
                f"{'ok' if d.ok else 'FAIL'}"
            )
        rows.append(f"{'class agreement':<26}{self.class_agreement:>12.3f}")
        return "\n".join(rows)


def _json_safe(record: dict) -> dict:
    """NaN (an output that was not compared) becomes null: JSON has no NaN."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in record.items()}


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
    classes, ``-1`` included. The reference runs in float32 (what the artifact is
    compared with) and in float64 on a copy of the model (to measure how much float32
    rounding alone moves each output; see :class:`Tolerance`). Never raises on
    mismatch: see :func:`assert_parity`.
    """
    explainer = artifact if isinstance(artifact, Explainer) else load_explainer(artifact, device="cpu")
    meta = explainer.metadata
    tol = tolerance or tolerance_for(meta.format)
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    model64 = copy.deepcopy(model).double() if tol.noise_factor > 0 else None
    batches = []
    for i, n in enumerate(batch_sizes):
        h, w = meta.input_size or meta.example_size
        if meta.input_size is None and i == len(batch_sizes) - 1:
            h, w = h + 32, w + 16
        batches.append(torch.randn(n, meta.in_channels, h, w, generator=gen))
    if inputs is not None:
        batches.append(torch.as_tensor(np.asarray(inputs, dtype=np.float32)))
    worst = {name: [0.0, 0.0] for name in OUTPUT_NAMES}
    noise = {name: [0.0, 0.0] for name in OUTPUT_NAMES}
    agree = total = ties = 0
    signal = 0.0
    maps = structured = 0
    for image in batches:
        classes = None
        if meta.class_input:
            classes = torch.randint(-1, meta.num_classes, (image.shape[0],), generator=gen)
            classes[0] = -1
        got = explainer(image, None if classes is None else classes.numpy()).outputs()

        want = _reference(model, meta, image, classes, device, torch.float32)
        want64 = _reference(model64, meta, image, classes, device, torch.float64) if model64 is not None else want
        stable = (want[2] == want64[2]).all(axis=1)  # near ties flip between float32 and float64
        same = (got[2] == want[2]).all(axis=1) & stable
        ties += int((~stable).sum())
        agree += int(same.sum())
        total += int(stable.sum())
        signal = max(signal, float(want[4].max()))
        compared = want[4][same].reshape(-1, *want[4].shape[2:])
        maps += len(compared)
        structured += int((compared.max(axis=(1, 2)) > compared.min(axis=(1, 2))).sum())
        for name, a, b, c in zip(OUTPUT_NAMES, got, want, want64, strict=True):
            if name == "class_index":
                continue
            if name in ("cam", "score"):  # maps and scores of different classes are not comparable
                a, b, c = a[same], b[same], c[same]
            if a.size == 0:
                continue
            _accumulate(worst[name], a, b)
            _accumulate(noise[name], b, c)
    report = ParityReport(
        artifact=str(explainer.path),
        format=meta.format,
        batches=[tuple(b.shape) for b in batches],
        class_agreement=agree / total if total else 1.0,
        tolerance=tol,
        cam_signal=signal,
        near_ties=ties,
        structured_maps=structured / maps if maps else 0.0,
    )
    limits = {
        "logits": (tol.logits_rtol, 1),
        "probabilities": (tol.probabilities_atol, 0),
        "score": (tol.score_atol, 0),
        "cam": (tol.cam_atol, 0),
    }
    for name, (limit, which) in limits.items():
        value, floor = worst[name][which], noise[name][which]
        effective = max(limit, tol.noise_factor * floor)
        # maps and scores are only comparable where the classes agree; none agreeing proves nothing
        compared = maps > 0 or name not in ("cam", "score")
        report.outputs[name] = OutputDiff(
            name, *worst[name], limit, ("max_abs", "max_rel")[which], floor, effective, compared and value <= effective
        )
        if not compared:
            report.outputs[name] = OutputDiff(name, math.nan, math.nan, limit, "max_abs", math.nan, limit, False)
    log.info("parity of %s: %s", explainer.path, "ok" if report.ok else "; ".join(report.failures()))
    return report


def _reference(net, meta, image, classes, device, dtype) -> list[np.ndarray]:
    outputs = reference_cam(
        net,
        meta.target_layer,
        image.to(device, dtype),
        None if classes is None else classes.to(device),
        meta.method,
        top_k=meta.top_k,
        upsample=meta.upsample,
        normalize=meta.normalize,
        return_all=True,
    )
    return [o.cpu().numpy() for o in outputs]


def _accumulate(slot: list[float], a: np.ndarray, b: np.ndarray) -> None:
    """Fold max |a - b| and max |a - b| / max |b| into ``slot``."""
    diff = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
    scale = float(np.abs(b).max())
    slot[0] = max(slot[0], diff)
    slot[1] = max(slot[1], diff / scale if scale > 0 else diff)


def assert_parity(report: ParityReport) -> ParityReport:
    """Raise ``ParityError`` listing every output beyond tolerance; return the report otherwise."""
    if not report.ok:
        lines = "\n".join(f"  {line}" for line in report.failures())
        raise ParityError(f"{report.artifact} differs from the eager reference:\n{lines}")
    return report


def parity_document(reports) -> str:
    """The ``parity.json`` document for several reports: overall ``ok`` and one record per artifact."""
    import json

    reports = list(reports)
    return json.dumps({"ok": all(r.ok for r in reports), "artifacts": [r.to_dict() for r in reports]}, indent=2) + "\n"
