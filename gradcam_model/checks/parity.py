"""Parity of an artifact with the eager reference (build side: needs torch and the trained model)."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from ..contract import GUIDED_METHODS
from ..errors import InputError, foreign_errors
from ..graph._trace_state import copy_model
from ..graph.layers import check_model
from ..graph.methods import get_method
from ..graph.reference import reference_cam, reference_reshape
from ..runtime.explainer import Explainer, load_explainer
from .gates import Chosen, traced
from .maskflips import Unclipped, diagnose, finish, flippable
from .report import ParityReport
from .runtimes import load_under, runtime_info
from .tally import MapBatch, Tally, batch_record, compare_batch, map_noise, output_diffs
from .tolerances import Tolerance, tolerance_for

__all__ = ["validate", "validate_each"]

log = logging.getLogger(__name__)


def validate(
    artifact: str | os.PathLike | Explainer,
    model: nn.Module,
    *,
    inputs=None,
    batch_sizes: tuple[int, ...] = (1, 3),
    seed: int = 0,
    tolerance: Tolerance | None = None,
    runtime: str | None = None,
) -> ParityReport:
    """Compare an artifact with ``reference_cam`` on ``model`` and report every difference.

    Runs random normalized images at each of ``batch_sizes`` (they should differ from
    the export example's batch of 2; for artifacts with dynamic height/width the last
    batch also uses another spatial size), plus the caller's ``inputs`` if given
    (``[N, C, H, W]`` array or tensor). Artifacts with a class input get random
    classes, ``-1`` included. The reference runs in float32 (what the artifact is
    compared with) and in float64 on a copy of the model (to measure how much float32
    rounding alone moves each output; see :class:`Tolerance`).

    A map beyond its limit is diagnosed (:mod:`gradcam_model.checks.maskflips`): when the
    eager map with some ReLU-family mask elements that sit within float32 rounding
    of their breakpoint flipped reproduces the artifact's map, the map passes as
    *explained*; the report lists every such map. Never raises on mismatch: see
    :func:`assert_parity`. :func:`validate_each` checks several artifacts of one
    graph for the price of one set of references.

    ``runtime`` (``NAME[:DEVICE]``, see :mod:`gradcam_model.checks.runtimes`) runs the artifact
    under another runtime than ONNX Runtime's CPU provider (``.onnx``) or libtorch on the
    CPU (``.pt``); the report's ``runtime`` names what ran it, its version and settings.
    """
    (report,) = validate_each(
        [artifact], model, inputs=inputs, batch_sizes=batch_sizes, seed=seed, tolerances=[tolerance], runtime=runtime
    )
    return report


@foreign_errors("validating the artifact")
def validate_each(
    artifacts: Sequence[str | os.PathLike | Explainer],
    model: nn.Module,
    *,
    inputs=None,
    batch_sizes: tuple[int, ...] = (1, 3),
    seed: int = 0,
    tolerances: Sequence[Tolerance | None] | None = None,
    runtime: str | None = None,
) -> list[ParityReport]:
    """:func:`validate` for several artifacts of one graph (the ONNX and TorchScript exports of
    one wrapper), one report each: every batch's eager references, most of the cost, are
    computed once and compared with each artifact. The artifacts must agree on everything
    the references depend on (layer, method, classes, sizes); ``tolerances`` go with them
    in order (None: :func:`tolerance_for` the artifact's format). ``runtime``: as for
    :func:`validate`, for the artifacts given as paths.
    """
    check_model(model)
    explainers = [_load(a, runtime) for a in artifacts]
    meta = _common_graph(explainers)
    tols = [t or tolerance_for(e.metadata.format) for t, e in zip(tolerances or [None] * len(explainers), explainers)]
    if len(tols) != len(explainers):
        raise ValueError(f"{len(explainers)} artifacts but {len(tols)} tolerances")
    gen = torch.Generator().manual_seed(seed)
    model64 = copy_model(model).double()
    batches = _batches(meta, batch_sizes, inputs, gen)
    reshapes: dict[tuple[int, ...], Callable] = {}  # per image size: the layer probe runs once, not per reference
    tallies = [Tally(guided=meta.method in GUIDED_METHODS) for _ in explainers]
    for index, image in enumerate(batches):
        # a step line per batch: `gradcam export` shows the latest one beside its running clock
        log.info(
            "validation batch %d/%d %s: %s, float32 and float64 references",
            index + 1,
            len(batches),
            "x".join(map(str, image.shape)),
            "artifact" if len(explainers) == 1 else f"{len(explainers)} artifacts",
        )
        size = tuple(image.shape[2:])
        if size not in reshapes:
            reshapes[size] = reference_reshape(model, meta.target_layer, image)
        classes = None
        if meta.class_input:
            classes = torch.randint(-1, meta.num_classes, (image.shape[0],), generator=gen)
            classes[0] = -1
        got = [e(image, None if classes is None else classes.numpy()).outputs() for e in explainers]
        ref = References(model, model64, meta, image, classes, reshapes[size])
        for outputs, tally, tol in zip(got, tallies, tols, strict=True):
            compare_batch(ref, outputs, tally, tol, index)
            tally.per_batch.append(batch_record(ref, outputs, tuple(image.shape)))
    reports = []
    for explainer, tally, tol in zip(explainers, tallies, tols, strict=True):
        report = ParityReport(
            artifact=str(explainer.path),
            format=explainer.metadata.format,
            batches=[tuple(b.shape) for b in batches],
            class_agreement=tally.agree / tally.total if tally.total else 1.0,
            tolerance=tol,
            cam_signal=tally.signal,
            near_ties=tally.ties,
            structured_maps=tally.structured / tally.maps if tally.maps else 0.0,
            runtime=runtime_info(explainer).to_dict(),
            per_batch=tally.per_batch,
        )
        report.outputs = output_diffs(tally, tol)
        _diagnose_maps(report, tally.beyond if _has_gates(meta.method) else [])
        log.info("parity of %s: %s", explainer.path, "ok" if report.ok else "; ".join(report.failures()))
        reports.append(report)
    return reports


def _load(artifact, runtime: str | None) -> Explainer:
    """An explainer for ``artifact``: as given, under ``runtime``, or the CPU default of its format."""
    if isinstance(artifact, Explainer):
        return artifact
    return load_explainer(artifact, device="cpu") if runtime is None else load_under(artifact, runtime)


# what the eager references depend on: artifacts validated together must agree on all of it
_REFERENCE_FIELDS = (
    "target_layer", "method", "num_classes", "in_channels", "input_size", "example_size",
    "top_k", "class_input", "upsample", "normalize",
)  # fmt: skip


def _common_graph(explainers: Sequence[Explainer]):
    """The metadata the artifacts share; an error when their references would differ."""
    if not explainers:
        raise ValueError("validate_each needs at least one artifact")
    first = explainers[0].metadata
    for other in explainers[1:]:
        differ = [f for f in _REFERENCE_FIELDS if getattr(other.metadata, f) != getattr(first, f)]
        if differ:
            raise InputError(
                f"{other.path} and {explainers[0].path} differ in {', '.join(differ)}: validate them separately"
            )
    return first


def _diagnose_maps(report: ParityReport, beyond: list[MapBatch]) -> None:
    """Diagnose every map beyond the cam limit; the maps pass as explained when mask flips account for all."""
    cam = report.outputs["cam"]
    for batch in beyond:
        failing = [n for n, e in batch.errors.items() if e > cam.limit]
        if failing and batch.rerun is not None:  # else no diagnosis: the maps fail
            log.info("%d map(s) of batch %d beyond the limit: looking for mask flips", len(failing), batch.index + 1)
            report.maps += diagnose(
                batch.rerun,
                batch.calls32,
                batch.calls64,
                batch.want,
                batch.got,
                failing,
                cam.limit,
                finish=batch.finish,
                batch=batch.index,
            )
    if report.maps and all(m.explained for m in report.maps):
        report.outputs["cam"] = replace(cam, ok=True, verdict="explained")


def _has_gates(method: str) -> bool:
    """Whether ``method``'s maps come from a target layer's gradient, which mask flips after it can explain
    (FullGrad and guided backprop take the input gradient, past every gate: their failures stand)."""
    return getattr(get_method(method), "uses_target_layer", True)


def _batches(meta, batch_sizes, inputs, gen) -> list[torch.Tensor]:
    """Random images at each batch size (the last at another height/width where those are dynamic)."""
    batches = []
    for i, n in enumerate(batch_sizes):
        h, w = meta.input_size or meta.example_size
        if meta.input_size is None and i == len(batch_sizes) - 1:
            h, w = h + 32, w + 16
        batches.append(torch.randn(n, meta.in_channels, h, w, generator=gen))
    if inputs is not None:
        batches.append(torch.as_tensor(np.asarray(inputs, dtype=np.float32)))
    return batches


class References:
    """One batch's eager references: float32 and float64 maps with their gate calls, shared by the artifacts."""

    def __init__(self, model, model64, meta, image, classes, reshape) -> None:
        self.model, self.meta, self.image, self.classes, self.reshape = model, meta, image, classes, reshape
        self.device = next(model.parameters()).device
        run32 = functools.partial(_reference, model, meta, image, classes, self.device, torch.float32, reshape)
        self.want, self.calls32 = traced(run32, model, meta.target_layer)
        run64 = functools.partial(_reference, model64, meta, image, classes, self.device, torch.float64, reshape)
        self.want64, self.calls64 = traced(run64, model64, meta.target_layer)
        self._noise: dict[tuple, float] = {}
        self.stable_count = int((self.want[2] == self.want64[2]).all(axis=1).sum())
        self.flippable = flippable(meta.method)  # mask-flip reruns: one pass per image (no aug-smooth, ablation)

    def rerun(self, rows: list[int], chosen: Chosen) -> np.ndarray:
        """float32 saliency before the ReLU (:meth:`finish` makes maps) of the samples ``rows``, ``chosen`` flipped."""
        if len(rows) > 1 and len(set(rows)) == 1:  # one image's variants: the layers before the target run once
            try:
                saliency = self._run_rows(rows[:1], chosen, repeat=len(rows))
            except RuntimeError as exc:  # code after the layer joins tensors from before it (a concatenation)
                log.debug("variants of one image run in full: %s", exc)
            else:
                if len(saliency) == len(rows):  # else the layer's output is not one tensor
                    return saliency
        return self._run_rows(rows, chosen)

    def _run_rows(self, rows: list[int], chosen: Chosen, repeat: int = 1) -> np.ndarray:
        take = torch.tensor(rows)
        subset = None if self.classes is None else self.classes[take]
        image = self.image[take]
        run = functools.partial(
            _reference, self.model, self.meta, image, subset, self.device, torch.float32, self.reshape, raw=True
        )
        return traced(run, self.model, self.meta.target_layer, chosen, repeat=repeat)[0][4]

    def finish(self, saliency: np.ndarray) -> np.ndarray:
        """The maps the reference makes of ``saliency``: its ReLU, upsampling and normalization."""
        size = tuple(self.image.shape[2:]) if self.meta.upsample else None
        return finish(saliency, size=size, normalize=self.meta.normalize)

    def map_noise(self, samples: list[int], tol: Tolerance) -> float:
        """:func:`map_noise` of these samples, computed once for all the artifacts that compare them."""
        key = (tuple(samples), tol.noise_factor > 0)
        if key not in self._noise:
            self._noise[key] = map_noise(
                (lambda rows, chosen: self.finish(self.rerun(rows, chosen))) if self.flippable else None,
                self.want[4],
                self.want64[4],
                self.calls32,
                self.calls64,
                samples,
                tol,
            )
        return self._noise[key]


def _reference(net, meta, image, classes, device, dtype, reshape, *, raw: bool = False) -> list[np.ndarray]:
    """The reference's outputs; with ``raw``, saliency before the ReLU in place of the maps (see ``diagnose``)."""
    outputs = reference_cam(
        net,
        meta.target_layer,
        image.to(device, dtype),
        None if classes is None else classes.to(device),
        Unclipped(meta.method) if raw else meta.method,
        top_k=meta.top_k,
        upsample=meta.upsample and not raw,
        normalize=meta.normalize and not raw,
        return_all=True,
        reshape=reshape,
    )
    return [o.cpu().numpy() for o in outputs]
