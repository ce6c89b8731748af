"""Build side of ``gradcam evaluate``: every CAM method scored side by side, and the randomization check.

:func:`compare_methods` exports one ONNX artifact per method, checks each for parity
with the eager model (as ``gradcam export`` does), scores the ones that pass with
:func:`gradcam_model.runtime.evaluate` on the same images and tabulates them.
:func:`~gradcam_model.checks.randomization.randomization_check` is the sanity check. Both take
the wrappers :func:`build_wrappers` makes, so a run doing both builds each method once.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .._atomic import write_bytes_atomic
from ..errors import InputError, MethodError
from ..graph.methods import METHODS, get_method
from ..graph.wrapper import GradCAMModel
from ..runtime.evaluate import BETTER, METRICS, Evaluation, evaluate
from .parity import validate
from .report import ParityReport, parity_document
from .tolerances import Tolerance

__all__ = ["Comparison", "build_wrappers", "compare_methods"]

log = logging.getLogger(__name__)

_SHORT = {"average_drop": "Average Drop", "increase_in_confidence": "Increase in Conf.", "deletion": "Deletion AUC",
          "insertion": "Insertion AUC", "road_morf": "ROAD MoRF", "road_lerf": "ROAD LeRF",
          "road_combined": "ROAD combined", "pointing_game": "Pointing game"}  # fmt: skip


def build_wrappers(
    model: nn.Module, methods: Sequence[str] | None, *, example_input: torch.Tensor, **options
) -> tuple[dict[str, GradCAMModel], dict[str, str]]:
    """One class-input ``GradCAMModel`` per method (default: every method) and why others could not be built.

    ``options`` go to ``GradCAMModel`` (``target_layer``, ``class_names``, ``mean``...). A
    method the model refuses (``cam`` without a global-average-pool + Linear head) is
    returned with its reason instead of raising; any other error raises.
    """
    names = [get_method(m).name for m in methods] if methods else list(METHODS)  # unknown names raise here
    wrappers, refused = {}, {}
    for method in names:
        try:
            wrappers[method] = GradCAMModel(
                model, method=method, example_input=example_input, class_input=True, **options
            )
        except MethodError as exc:
            refused[method] = str(exc)
            log.info("method %s not built: %s", method, exc)
    return wrappers, refused


@dataclass(frozen=True)
class Comparison:
    """Every method's :class:`Evaluation` on the same images, and why the others were not scored."""

    evaluations: dict[str, Evaluation]
    not_scored: dict[str, str]  # method -> reason (the model refused it; its artifact failed parity)
    seconds: dict[str, dict[str, float]]  # method -> build, export, validate, evaluate seconds
    artifacts: dict[str, Path] = field(default_factory=dict)
    parity: dict[str, ParityReport] = field(default_factory=dict)

    @property
    def parity_failed(self) -> list[str]:
        """Methods whose artifact failed its parity check (not scored)."""
        return [m for m, report in self.parity.items() if not report.ok]

    def table(self) -> str:
        """Markdown: one row per method, the mean of each metric (arrows: which way is better)."""
        metrics = [m for m in METRICS if any(m in e.scores for e in self.evaluations.values())]
        arrows = {"lower": "↓", "higher": "↑"}
        head = "| method | " + " | ".join(f"{_SHORT[m]} {arrows[BETTER[m]]}" for m in metrics) + " | export s |"
        rows = [head, "|---|" + "---:|" * (len(metrics) + 1)]
        for method, evaluation in self.evaluations.items():
            summary = evaluation.summary()
            cells = " | ".join(
                "-" if not math.isfinite(summary.get(m, math.nan)) else f"{summary[m]:.4f}" for m in metrics
            )
            rows.append(f"| {method} | {cells} | {self.seconds[method].get('export', math.nan):.0f} |")
        first = next(iter(self.evaluations.values()), None)
        for name, summary in (first.baseline_summary() if first else {}).items():
            if name == "inverted":
                continue  # each method's own map inverted: in its summary.md
            cells = " | ".join("-" if not math.isfinite(summary.get(m, math.nan)) else f"{summary[m]:.4f}"
                               for m in metrics)  # fmt: skip
            rows.append(f"| baseline: {name} | {cells} | |")
        verdicts = [f"- {method}: " + "; ".join(_verdict(g) for g in e.margins())
                    for method, e in self.evaluations.items() if e.baseline_scores]  # fmt: skip
        for method, why in self.not_scored.items():
            rows.append(f"| {method} | not scored: {why.splitlines()[0]} |" + " |" * len(metrics))
        if self.evaluations:
            e = next(iter(self.evaluations.values()))
            rows += ["", f"{len(e.names)} images, {e.steps} deletion/insertion steps, {e.baseline} substrate"]
            if verdicts:
                rows += ["", "Each method against the best baseline (margin, bootstrap 95% interval; positive: "
                         "better):", "", *verdicts]  # fmt: skip
        return "\n".join(rows) + "\n"

    def to_dict(self) -> dict:
        return {
            "methods": {m: e.to_dict() for m, e in self.evaluations.items()},
            "not_scored": dict(self.not_scored),
            "seconds": {m: {k: round(v, 2) for k, v in s.items()} for m, s in self.seconds.items()},
        }


def _verdict(g) -> str:
    return f"{_SHORT[g.metric]} {g.verdict} ({g.margin:+.4f} [{g.low:+.4f}, {g.high:+.4f}] vs {g.best_baseline})"


def _slug(method: str) -> str:
    return method.replace("+", "p")


def compare_methods(
    model: nn.Module,
    images,
    *,
    out_dir: str | os.PathLike,
    methods: Sequence[str] | None = None,
    target_layer: str = "auto",
    wrappers: Mapping[str, GradCAMModel] | None = None,
    not_built: Mapping[str, str] | None = None,
    tolerance: Tolerance | None = None,
    evaluate_options: Mapping | None = None,
    progress: Callable[[str], None] | None = None,
    **wrapper_options,
) -> Comparison:
    """Export, validate and score every method on ``images``; write the table and the artifacts.

    Args:
        model: the trained classifier. Left unchanged.
        images: normalized float ``[N, 3, H, W]`` (what the artifacts take).
        out_dir: gets ``artifacts/<method>.onnx``, ``parity.json``, one folder of
            :meth:`Evaluation.write` files per method, ``comparison.md`` and ``comparison.json``.
        methods: method names (default: every method in :data:`gradcam_model.METHODS`).
        target_layer: the layer every method explains (ignored with ``wrappers``).
        wrappers, not_built: prebuilt class-input wrappers by method and the methods the model
            refused, with why (both from :func:`build_wrappers`).
        tolerance: the parity tolerance (default: ONNX's).
        evaluate_options: keyword arguments for :func:`gradcam_model.runtime.evaluate`.
        progress: called with a short line before each slow step.
        wrapper_options: more ``GradCAMModel`` options (``class_names``, ``mean``, ``std``...).
    """
    from ..export import export_onnx

    step = progress or (lambda _text: None)
    out = Path(out_dir)
    array = np.asarray(images, dtype=np.float32)
    if array.ndim != 4:
        raise InputError(f"images must be [N, C, H, W], got shape {array.shape}")
    seconds: dict[str, dict[str, float]] = {}
    not_scored: dict[str, str] = dict(not_built or {})
    if wrappers is None:
        wrappers, not_scored = build_wrappers(
            model, methods, example_input=torch.from_numpy(array[:2]), target_layer=target_layer, **wrapper_options
        )
    reports, evaluations, artifacts = {}, {}, {}
    for method, wrapper in wrappers.items():
        times = seconds.setdefault(method, {"build": wrapper.build_seconds})
        step(f"exporting {method}")
        started = time.perf_counter()
        path = export_onnx(wrapper, out / "artifacts" / f"{_slug(method)}.onnx", overwrite=True)
        times["export"] = time.perf_counter() - started
        step(f"validating {method}")
        started = time.perf_counter()
        report = validate(path, model, inputs=array[:4], tolerance=tolerance)
        times["validate"] = time.perf_counter() - started
        reports[method] = report
        artifacts[method] = path
        if not report.ok:
            not_scored[method] = "parity failed: " + "; ".join(report.failures())
            continue
        step(f"scoring {method}")
        started = time.perf_counter()
        evaluations[method] = evaluate(path, array, **dict(evaluate_options or {}))
        times["evaluate"] = time.perf_counter() - started
        evaluations[method].write(out / _slug(method))
    if reports:
        write_bytes_atomic(out / "parity.json", parity_document(reports.values()).encode(), overwrite=True)
    comparison = Comparison(evaluations, not_scored, seconds, artifacts, reports)
    write_bytes_atomic(out / "comparison.md", comparison.table().encode(), overwrite=True)
    document = json.dumps(comparison.to_dict(), indent=2) + "\n"
    write_bytes_atomic(out / "comparison.json", document.encode(), overwrite=True)
    return comparison
