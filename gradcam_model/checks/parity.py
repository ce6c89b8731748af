"""Parity of an artifact with the eager reference (build side: needs torch and the trained model)."""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from torch import nn

from ..contract import GUIDED_METHODS, GUIDED_OUTPUT, OUTPUT_NAMES, output_names
from ..errors import InputError, ParityError, foreign_errors
from ..graph._trace_state import copy_model
from ..graph.layers import check_model
from ..graph.methods import get_method
from ..graph.reference import reference_cam, reference_reshape
from ..runtime.explainer import Explainer, load_explainer
from .gates import Chosen, disagreements, traced
from .maskflips import MapDiagnosis, Rerun, Unclipped, diagnose, finish, flippable
from .runtimes import load_under, runtime_info
from .tolerances import TOLERANCES, Tolerance, tolerance_for

__all__ = [
    "Tolerance",
    "TOLERANCES",
    "tolerance_for",
    "OutputDiff",
    "MapDiagnosis",
    "ParityReport",
    "validate",
    "validate_each",
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


_ALL_OUTPUTS = (*OUTPUT_NAMES, GUIDED_OUTPUT)
_PER_CLASS = ("score", "cam", GUIDED_OUTPUT)  # outputs of the explained classes: compared where the classes agree


@dataclass
class _Tally:
    """What the batches add up to: worst differences, float32 noise, class and map counts."""

    worst: dict[str, list[float]] = field(default_factory=lambda: {n: [0.0, 0.0] for n in _ALL_OUTPUTS})
    noise: dict[str, list[float]] = field(default_factory=lambda: {n: [0.0, 0.0] for n in _ALL_OUTPUTS})
    guided: bool = False  # the artifact has the guided output (compared where the classes agree, as the maps)
    agree: int = 0
    total: int = 0
    ties: int = 0
    signal: float = 0.0
    maps: int = 0
    structured: int = 0
    beyond: list[_MapBatch] = field(default_factory=list)  # batches with maps beyond the plain tolerance
    per_batch: list[dict] = field(default_factory=list)  # see _batch_record


@dataclass
class _MapBatch:
    """One batch's maps beyond the plain tolerance, kept for their diagnosis once every limit is known."""

    index: int
    got: np.ndarray
    want: np.ndarray
    errors: dict[int, float]  # sample -> max |artifact - eager float32| over its maps
    rerun: Rerun | None  # None: mask flips cannot be rerun (see maskflips.flippable)
    finish: Callable[[np.ndarray], np.ndarray]
    calls32: list
    calls64: list


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
    tallies = [_Tally(guided=meta.method in GUIDED_METHODS) for _ in explainers]
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
        ref = _References(model, model64, meta, image, classes, reshapes[size])
        for outputs, tally, tol in zip(got, tallies, tols, strict=True):
            _compare(ref, outputs, tally, tol, index)
            tally.per_batch.append(_batch_record(ref, outputs, tuple(image.shape)))
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
        report.outputs = _output_diffs(tally, tol)
        _diagnose_maps(report, tally.beyond if _has_gates(meta.method) else [])
        log.info("parity of %s: %s", explainer.path, "ok" if report.ok else "; ".join(report.failures()))
        reports.append(report)
    return reports


def _load(artifact, runtime: str | None) -> Explainer:
    """An explainer for ``artifact``: as given, under ``runtime``, or the CPU default of its format."""
    if isinstance(artifact, Explainer):
        return artifact
    return load_explainer(artifact, device="cpu") if runtime is None else load_under(artifact, runtime)


def _batch_record(ref: _References, got: list[np.ndarray], shape: tuple[int, ...]) -> dict:
    """One batch's worst [max abs, max rel] |artifact - eager float32| per output (maps and scores:
    over the samples whose classes agree; None where none do)."""
    same = (got[2] == ref.want[2]).all(axis=1) & (ref.want[2] == ref.want64[2]).all(axis=1)
    worst: dict[str, list[float] | None] = {}
    for name, a, b in zip(output_names(ref.meta.method), got, ref.want, strict=True):
        if name == "class_index":
            continue
        if name in _PER_CLASS:
            a, b = a[same], b[same]
        worst[name] = None
        if a.size:
            worst[name] = [0.0, 0.0]
            _accumulate(worst[name], a, b)
    return {"shape": list(shape), "agree": int(same.sum()), "stable": int(ref.stable_count), "worst": worst}


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


def _diagnose_maps(report: ParityReport, beyond: list[_MapBatch]) -> None:
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


class _References:
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
        """:func:`_map_noise` of these samples, computed once for all the artifacts that compare them."""
        key = (tuple(samples), tol.noise_factor > 0)
        if key not in self._noise:
            self._noise[key] = _map_noise(
                (lambda rows, chosen: self.finish(self.rerun(rows, chosen))) if self.flippable else None,
                self.want[4],
                self.want64[4],
                self.calls32,
                self.calls64,
                samples,
                tol,
            )
        return self._noise[key]


def _compare(ref: _References, got: list[np.ndarray], tally: _Tally, tol: Tolerance, index: int) -> None:
    """Fold one batch's differences between an artifact's outputs ``got`` and the references into ``tally``."""
    want, want64 = ref.want, ref.want64
    stable = (want[2] == want64[2]).all(axis=1)  # near ties flip between float32 and float64
    same = (got[2] == want[2]).all(axis=1) & stable
    tally.ties += int((~stable).sum())
    tally.agree += int(same.sum())
    tally.total += int(stable.sum())
    tally.signal = max(tally.signal, float(want[4].max()))
    compared = want[4][same].reshape(-1, *want[4].shape[2:])
    tally.maps += len(compared)
    tally.structured += int((compared.max(axis=(1, 2)) > compared.min(axis=(1, 2))).sum())
    for name, a, b, c in zip(output_names(ref.meta.method), got, want, want64, strict=True):
        if name in ("class_index", "cam"):
            continue
        if name in _PER_CLASS:  # scores (and guided images) of different classes are not comparable
            a, b, c = a[same], b[same], c[same]
        if a.size:
            _accumulate(tally.worst[name], a, b)
            _accumulate(tally.noise[name], b, c)
    samples = [int(n) for n in np.flatnonzero(same)]
    if samples:
        _accumulate(tally.worst["cam"], got[4][same], want[4][same])
        tally.noise["cam"][0] = max(tally.noise["cam"][0], ref.map_noise(samples, tol))
        errors = {n: float(np.abs(got[4][n] - want[4][n]).max()) for n in samples}
        if max(errors.values()) > tol.cam_atol:
            rerun = ref.rerun if ref.flippable else None
            tally.beyond.append(_MapBatch(index, got[4], want[4], errors, rerun, ref.finish, ref.calls32, ref.calls64))


def _map_noise(rerun, want, want64, calls32, calls64, samples, tol: Tolerance) -> float:
    """Max |eager float32 - float64| over the samples' maps, taken with float64's masks.

    Where float32 and float64 take different sides of a gate's breakpoint, their maps differ
    by a mask flip, not by how badly float32 rounding is conditioned: float32 is recomputed
    with float64's sides there, so that the noise allowance never covers a flip.
    """
    differ = disagreements(calls32, calls64, samples)
    if differ and tol.noise_factor > 0 and rerun is not None:
        log.info("float32 and float64 masks differ: float32 reference again with float64's masks")
        want = rerun(list(range(len(want))), differ)
    return float(max(np.abs(want[n].astype(np.float64) - want64[n]).max() for n in samples))


def _output_diffs(tally: _Tally, tol: Tolerance) -> dict[str, OutputDiff]:
    limits = {
        "logits": (tol.logits_rtol, 1),
        "probabilities": (tol.probabilities_atol, 0),
        "score": (tol.score_atol, 0),
        "cam": (tol.cam_atol, 0),
        **({GUIDED_OUTPUT: (tol.guided_rtol, 1)} if tally.guided else {}),
    }
    diffs = {}
    for name, (limit, which) in limits.items():
        # maps and scores are only comparable where the classes agree; none agreeing proves nothing
        if tally.maps == 0 and name in _PER_CLASS:
            diffs[name] = OutputDiff(name, math.nan, math.nan, limit, "max_abs", math.nan, limit, False, "not compared")
            continue
        value, floor = tally.worst[name][which], tally.noise[name][which]
        effective = max(limit, tol.noise_factor * floor, _softmax_allowance(name, diffs))
        ok = value <= effective
        measure = ("max_abs", "max_rel")[which]
        diffs[name] = OutputDiff(name, *tally.worst[name], limit, measure, floor, effective, ok, "ok" if ok else "FAIL")
    return diffs


def _softmax_allowance(name: str, diffs: dict[str, OutputDiff]) -> float:
    """How far probabilities and scores may move given logits that passed: half their max abs difference.

    softmax's Jacobian ``diag(p) - p p^T`` moves ``p_i`` by ``p_i (dz_i - sum_j p_j dz_j)``, at most
    ``2 p_i (1 - p_i) max|dz| <= max|dz| / 2``: the logits' accepted float32 difference (their own noise
    and reordering) reaches the probabilities scaled by at most 1/2, whatever the probabilities' own
    float32-vs-float64 measure says (mvitv2_tiny: logits within limit, probabilities 1.0e-5 with noise 4.7e-6).
    """
    logits = diffs.get("logits")
    if name not in ("probabilities", "score") or logits is None or not logits.ok:
        return 0.0
    return logits.max_abs / 2


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
