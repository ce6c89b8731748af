"""The arithmetic of a parity check: each batch's differences folded into a tally, and the limits they meet."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..contract import GUIDED_OUTPUT, OUTPUT_NAMES, output_names
from .gates import disagreements
from .maskflips import Rerun
from .report import OutputDiff
from .tolerances import Tolerance

if TYPE_CHECKING:
    from .parity import References

__all__ = ["MapBatch", "Tally", "batch_record", "compare_batch", "map_noise", "output_diffs"]

log = logging.getLogger(__name__)

_ALL_OUTPUTS = (*OUTPUT_NAMES, GUIDED_OUTPUT)
_PER_CLASS = ("score", "cam", GUIDED_OUTPUT)  # outputs of the explained classes: compared where the classes agree


@dataclass
class Tally:
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
    beyond: list[MapBatch] = field(default_factory=list)  # batches with maps beyond the plain tolerance
    per_batch: list[dict] = field(default_factory=list)  # see _batch_record


@dataclass
class MapBatch:
    """One batch's maps beyond the plain tolerance, kept for their diagnosis once every limit is known."""

    index: int
    got: np.ndarray
    want: np.ndarray
    errors: dict[int, float]  # sample -> max |artifact - eager float32| over its maps
    rerun: Rerun | None  # None: mask flips cannot be rerun (see maskflips.flippable)
    finish: Callable[[np.ndarray], np.ndarray]
    calls32: list
    calls64: list


def compare_batch(ref: References, got: list[np.ndarray], tally: Tally, tol: Tolerance, index: int) -> None:
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
            tally.beyond.append(MapBatch(index, got[4], want[4], errors, rerun, ref.finish, ref.calls32, ref.calls64))


def map_noise(rerun, want, want64, calls32, calls64, samples, tol: Tolerance) -> float:
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


def output_diffs(tally: Tally, tol: Tolerance) -> dict[str, OutputDiff]:
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


def _accumulate(slot: list[float], a: np.ndarray, b: np.ndarray) -> None:
    """Fold max |a - b| and max |a - b| / max |b| into ``slot``."""
    diff = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
    scale = float(np.abs(b).max())
    slot[0] = max(slot[0], diff)
    slot[1] = max(slot[1], diff / scale if scale > 0 else diff)


def batch_record(ref: References, got: list[np.ndarray], shape: tuple[int, ...]) -> dict:
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
