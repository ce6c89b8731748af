"""Why a map differs: gating elements (ReLU masks...) that sit within float32 rounding of a breakpoint.

The derivative of a ReLU-family gate jumps at its breakpoint (0 for ReLU). A pre-activation
that lands within float32 rounding of the breakpoint falls on either side depending on the
order a runtime sums in, and every gradient behind that element, hence the map, moves: by
~1e-2 on resnet18 at ``layer3`` for one element of thousands, while the logits agree to 1e-6.
Both sides are right to float32 precision. :func:`diagnose` finds such elements between the
target layer and the logits in the eager reference (float32 pre-activations against float64)
and shows the cause instead of assuming it: the eager map recomputed with some of them flipped
to the other side must reproduce the artifact's map within the plain tolerance.

On resnet50 at ``layer3`` ONNX Runtime flips 7 to 14 elements per map among ~600 such
candidates, and their effects interact through the map's ReLU: the search sums effects in
the saliency before it, and eager with the set it finds matches the artifact to 5e-5.

The search must not depend on how eager float32 rounds, which changes with torch's thread
count and with the batch: every rerun takes each candidate on float64's side of its
breakpoint, or on the other side where the search flips it, whatever side that rerun's own
float32 put it on (a side, not a toggle: see ``Chosen`` in :mod:`gradcam_model.checks.gates`), and
candidates rank by float64's distance from the breakpoint. Toggles relative to eager float32
failed resnet50 ``layer3`` batch 1 sample 1 with 16 torch threads (1.2e-3 left after 8 flips,
64 candidates): the batch of one image's single-flip variants rounded layer4.0.relu element
(21, 12, 10) to +1.1e-7 where the original batch had -1.1e-6 (float64: +5.9e-5), one of the
7 flips the map needs, so its toggle measured the opposite flip. Now that map is explained
with 7 flips at 3.6e-5, and all 4 maps with 1, 2, 8 and 16 threads alike (residuals 3.0e-5
to 4.9e-5, within 5e-6 of each other across thread counts). From float64's sides ONNX
Runtime flips 5 to 9 elements per map there (7 to 14 from eager float32's, which the report
lists: what eager's maps need). ONNX Runtime with graph optimizations off flips more (12 to
18 from eager's): 2 of its 4 maps failed before (1.3e-3 and 5.4e-3 left) with 2 and 16
threads alike; forced sides explain one, and the widened rounds (:data:`WIDEN`) the other.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import MethodError
from ..graph.methods import CAMMethod, get_method, postprocess
from .gates import Chosen, GateCall, disagreements, nearest_breakpoint, same_gates

__all__ = [
    "MARGIN",
    "MAX_CANDIDATES",
    "MAX_ROUNDS",
    "MAX_ROUNDS_WIDE",
    "MaskFlip",
    "MapDiagnosis",
    "Rerun",
    "Unclipped",
    "WIDEN",
    "diagnose",
    "finish",
    "flippable",
]

# An element is a candidate when its float32 pre-activation lies within MARGIN times the
# largest |float32 - float64| of its tensor from a breakpoint. That difference is what float32
# rounding did to this tensor in eager torch, accumulated over every layer before it; a runtime
# that sums in another order makes an error of the same size, not the same error (the element
# ONNX Runtime flips on resnet18 layer3 is one torch float32 and float64 agree on), hence a margin.
MARGIN = 4.0
# Candidates tried per sample and round, likeliest to flip first (each one row of an eager batch).
MAX_CANDIDATES = 16
# Rounds of single flips per sample, each measured on top of the flips the rounds before picked:
# a map explained early costs one round, a map never explained MAX_ROUNDS (its cost bound).
MAX_ROUNDS = 4
# A map whose flips so far took away all but WIDEN of its squared difference from eager float32
# is one flips explain but for elements further down the order: its rounds go on past
# MAX_ROUNDS, up to MAX_ROUNDS_WIDE (its cost bound). A wrong map keeps most of its difference
# (test_maskflips' bump: 0.28 after its flip); ONNX Runtime with graph optimizations off left
# resnet50 layer3 batch 1 sample 0 at 0.017 (1.3e-3) after 4 rounds, explained after 6.
WIDEN, MAX_ROUNDS_WIDE = 0.1, 2 * MAX_ROUNDS
# The search over the measured elements' sets (see _Search.pick): its most steps, the steps
# without a better set after which it ends, and how many steps a changed element stays put.
# Enough for the 14 flips among 32 candidates on resnet50 layer3.
_STEPS, _PATIENCE, _TENURE = 40, 15, 10


@dataclass(frozen=True)
class MaskFlip:
    """One gating element taken on the other side of its breakpoint."""

    at: str  # the gate: its module name ("layer4.0.relu", "#2" on a second call)
    index: tuple[int, ...]  # the element within the sample's tensor (channel, row, column)
    float32: float  # its pre-activation in eager float32
    float64: float  # and in float64


@dataclass(frozen=True)
class MapDiagnosis:
    """Why one sample's maps differ from eager float32 beyond tolerance, and whether mask flips explain it."""

    batch: int  # index of the input batch
    sample: int  # index within the batch
    max_abs: float  # max |artifact - eager float32| over the sample's maps
    candidates: int  # gating elements within float32 rounding of a breakpoint
    flips: tuple[MaskFlip, ...]  # those flipped to reproduce the artifact
    residual: float  # max |artifact - eager float32 with them flipped|
    explained: bool
    tried: int = 0  # candidates flipped one at a time, likeliest to flip first (MAX_CANDIDATES per round)

    def describe(self) -> str:
        where = f"batch {self.batch} sample {self.sample}: max abs {self.max_abs:.3g}"
        if not self.candidates:
            return f"{where}; no mask element within float32 rounding of a breakpoint"
        near = f"{self.candidates} mask element(s) within float32 rounding of a breakpoint"
        if self.candidates > self.tried:
            near += f" ({self.tried} likeliest to flip tried)"
        if not self.flips:
            return f"{where}; {near}, flipping none of them brings the reference closer"
        at = ", ".join(dict.fromkeys(f.at for f in self.flips))
        return f"{where}; {near}, {len(self.flips)} flipped at {at}: the reference matches to {self.residual:.3g}"


Rerun = Callable[[list[int], Chosen], np.ndarray]


class Unclipped(CAMMethod):
    """A CAM method's saliency without its ReLU, what a rerun for :func:`diagnose` computes.

    Mask flips change the gradient, hence the saliency, almost additively (a flip changes
    the gradient behind the others by a product of two small terms); the ReLU of the map
    and its min-max normalization do not add up: several flips that each leave a pixel
    below zero can lift it above together. So the effects are summed before the ReLU.
    """

    name = "unclipped"

    def __init__(self, method: str | CAMMethod) -> None:
        self.method = get_method(method)
        if not getattr(self.method, "uses_target_layer", True):
            raise MethodError(f"method {self.method.name!r} reads no target layer: no mask flip after one explains it")
        if not flippable(self.method):  # a target layer, several passes
            raise MethodError(f"{self.method.name!r} runs several passes per image: its mask flips cannot be rerun")
        if hasattr(self.method, "score"):  # FinerCAM differentiates a score of the logits
            self.score = self.method.score
        # guided Grad-CAM's map is its Grad-CAM's: a rerun needs no guided gradient
        self.method = getattr(self.method, "gradcam", self.method)

    def saliency(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return self.method.saliency(activations, gradients)

    def __call__(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return self.saliency(activations, gradients)


def flippable(method: str | CAMMethod) -> bool:
    """Whether a method's map is a target layer's, one pass per image (the rows mask flips are indexed by):
    not ``+aug-smooth`` (6 passes), AblationCAM (one per channel), FullGrad or guided backprop (no layer)."""
    m = get_method(method)
    return getattr(m, "uses_target_layer", True) and not (m.aug_smooth or getattr(m, "ablates", False))


def finish(saliency: np.ndarray | torch.Tensor, size: tuple[int, int] | None, normalize: bool):
    """Maps ``[N, K, H, W]`` from :class:`Unclipped` saliency ``[N, K, h, w]``: the ReLU, then :func:`postprocess`.

    Of the same type as ``saliency`` (a numpy array or a tensor).
    """
    if isinstance(saliency, np.ndarray):
        return finish(torch.from_numpy(saliency), size, normalize).numpy()
    return postprocess(torch.relu(saliency), size, normalize)


def diagnose(
    rerun: Rerun,
    calls32: Sequence[GateCall],
    calls64: Sequence[GateCall],
    base: np.ndarray,
    got: np.ndarray,
    failing: Sequence[int],
    limit: float,
    *,
    finish: Callable[[np.ndarray], np.ndarray],
    batch: int = 0,
) -> list[MapDiagnosis]:
    """Explain the artifact's maps ``got`` ``[N, K, H, W]`` of samples ``failing`` by mask flips.

    ``base`` are the eager float32 maps, whose pass recorded ``calls32`` (``calls64``: the
    float64 pass); ``rerun(rows, chosen)`` recomputes the :class:`Unclipped` saliency of the
    batch made of samples ``rows`` (repeats allowed) with the chosen elements of each row
    flipped, and ``finish`` turns saliency into maps. Candidates are the gating elements after
    the target layer within :data:`MARGIN` float32 rounding of a breakpoint, likeliest to flip
    first (:func:`_candidates`); every rerun puts each of them on float64's side unless the
    search flips it (the search's sets are flips from float64's sides; the report's, from
    eager float32's in ``base``, the two differing where float32 and float64 disagree). Each
    round measures the next :data:`MAX_CANDIDATES` flipped one at a time (one row each) on top
    of the current set; a tabu search over every candidate measured so far
    (:meth:`_Search.pick`) picks the set whose summed saliency, finished, comes closest to
    ``got``; one pass of the original batch measures that set's residual (a set that does worse than
    the one before is dropped). Rounds go on while a residual exceeds ``limit``, up to
    :data:`MAX_ROUNDS` (:data:`MAX_ROUNDS_WIDE` for a map the flips found took all but
    :data:`WIDEN` of the difference from): explained when the last residual is within ``limit``.
    """
    comparable = same_gates(calls32, calls64)
    # every candidate takes float64's side, or the other one where the search flips it: which
    # side eager float32 put it on, in this batch or in a rerun's, changes nothing
    basis = {n: set(e) for n, e in disagreements(calls32, calls64, failing).items()} if comparable else {}
    candidates = {n: _candidates(calls32, calls64, n, basis.get(n, ())) if comparable else [] for n in failing}
    sides = {n: _sides64(calls64, calls32, c, n) for n, c in candidates.items()}

    def forced(n: int, flipped: Collection[tuple[int, int]]) -> list[tuple[int, int, bool]]:
        return [(c, i, side != ((c, i) in flipped)) for (c, i), side in sides[n].items()]

    def run(rows: list[int], chosen: Chosen) -> np.ndarray:
        return rerun(rows, {n: forced(n, set(chosen.get(n, ()))) for n in failing})

    # the saliency of ``base``'s batch with every candidate on float64's side: the sums start
    # from the batch's own pass (elsewhere than the candidates, other rows may round otherwise)
    everyone = list(range(len(base)))
    origin = run(everyone, {n: [] for n in failing}) if any(candidates.values()) else None
    searches = {n: _Search(got[n : n + 1], None if origin is None else origin[n], finish) for n in failing}
    final = base if origin is None else finish(origin)
    for round_ in range(MAX_ROUNDS_WIDE):
        new = {n: c[round_ * MAX_CANDIDATES : (round_ + 1) * MAX_CANDIDATES] for n, c in candidates.items()}
        new = {n: c for n, c in new.items() if c and _error(final[n], got[n]) > limit}
        if round_ >= MAX_ROUNDS:
            new = {n: c for n, c in new.items() if _squared(final[n], got[n]) <= WIDEN * _squared(base[n], got[n])}
        if not new:
            break
        chosen = {n: s.chosen for n, s in searches.items()}
        for n, (origin, flipped) in _single_flips(rerun, new, chosen, forced).items():
            searches[n].measure(new[n], origin, flipped)
        picks = {n: searches[n].pick() for n in new}
        if all(set(p) == set(searches[n].chosen) for n, p in picks.items()):
            continue
        trial = run(everyone, chosen | picks)
        maps, final = finish(trial), final.copy()
        for n, p in picks.items():
            # the sum is a linearization: a set that does worse than the one before is dropped
            if _squared(maps[n], got[n]) < _squared(final[n], got[n]):
                searches[n].accept(p, trial[n])
                final[n] = maps[n]
    # the flips reported: those from eager float32's sides in ``base``, what its maps need
    flips = {n: sorted(set(s.chosen) ^ basis.get(n, set())) for n, s in searches.items()}
    return [
        _diagnosis(batch, n, base, got, final, len(candidates[n]), s.tried, flips[n], calls32, calls64, limit)
        for n, s in searches.items()
    ]


class _Search:
    """One sample's flips: each measured element's saliency effect, and the set chosen so far."""

    def __init__(self, got: np.ndarray, origin: np.ndarray | None, finish: Callable[[np.ndarray], np.ndarray]) -> None:
        self.got, self.finish = torch.from_numpy(got), finish
        self.effects: dict[tuple[int, int], np.ndarray] = {}  # flipped minus unflipped
        self.chosen: list[tuple[int, int]] = []
        self.origin = origin  # the saliency with ``chosen`` flipped, in the original batch

    @property
    def tried(self) -> int:
        return len(self.effects)

    def measure(self, elements, origin: np.ndarray, flipped: np.ndarray) -> None:
        """Effects of ``elements`` from their saliency flipped on top of the chosen ones (``origin``: none)."""
        self.effects.update((e, s - origin) for e, s in zip(elements, flipped, strict=True))

    def accept(self, chosen: list[tuple[int, int]], saliency: np.ndarray) -> None:
        self.chosen, self.origin = chosen, saliency

    def pick(self) -> list[tuple[int, int]]:
        """The set of measured elements whose summed saliency effects, finished, come closest to the artifact.

        Tabu searches from the chosen set and from none: each step makes the best change of one
        element (in or out), uphill too, but does not undo one of the last :data:`_TENURE`
        changes unless that beats the best set seen. The effects overlap (they all lie in the
        span of the target layer's activations): greedy descent stops at sets that explain part
        of the map with the wrong elements, while the flips that explain all of it lie a few
        uphill steps on; a chosen set picked from fewer candidates can be such a trap.
        """
        elements = list(self.effects)
        effects = torch.from_numpy(np.stack([self.effects[e] for e in elements]))
        flipped = torch.tensor([e in self.chosen for e in elements])
        starts = [(flipped, torch.from_numpy(self.origin))]
        if flipped.any():
            signs = 1.0 - 2.0 * flipped.to(effects.dtype)
            starts.append(
                (torch.zeros_like(flipped), starts[0][1] + (signs[flipped, None, None, None] * effects[flipped]).sum(0))
            )
        best = min((self._tabu(effects, *start) for start in starts), key=lambda found: found[0])[1]
        return [e for e, f in zip(elements, best.tolist(), strict=True) if f]

    def _tabu(self, effects: torch.Tensor, flipped: torch.Tensor, current: torch.Tensor) -> tuple[float, torch.Tensor]:
        """The best set a tabu search from ``flipped`` (whose saliency is ``current``) meets, and its error."""
        flipped = flipped.clone()
        best_error, best = float(self._errors(current[None])[0]), flipped.clone()
        banned_until = torch.zeros(len(effects), dtype=torch.long)
        found = 0
        for step in range(_STEPS):
            if step - found > _PATIENCE:
                break
            signs = 1.0 - 2.0 * flipped.to(effects.dtype)  # +1 flips an element, -1 takes it back
            errors = self._errors(current[None] + signs[:, None, None, None] * effects)
            errors[(banned_until > step) & (errors >= best_error)] = float("inf")
            j = int(errors.argmin())
            if not math.isfinite(float(errors[j])):
                break
            current = current + signs[j] * effects[j]
            flipped[j] = ~flipped[j]
            banned_until[j] = step + 1 + _TENURE
            if float(errors[j]) < best_error:
                best_error, best, found = float(errors[j]), flipped.clone(), step
        return best_error, best

    def _errors(self, saliency: torch.Tensor) -> torch.Tensor:
        """Squared error of the finished maps of saliency ``[M, K, h, w]`` against the artifact's."""
        return (self.finish(saliency) - self.got).square().sum(dim=(1, 2, 3))


def _error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).max())


def _squared(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.square(a.astype(np.float64) - b).sum())


def _single_flips(
    rerun: Rerun, tried: Chosen, chosen: Chosen, forced: Callable[[int, Collection[tuple[int, int]]], list]
) -> dict[int, tuple[np.ndarray, list[np.ndarray]]]:
    """Each sample's saliency with its ``chosen`` flips, and with each of its ``tried`` elements flipped on top
    (``forced(n, flips)``: the sides every candidate of sample ``n`` takes, see :func:`diagnose`).

    The variants of a sample run as the rows of one batch (the first with the ``chosen`` flips
    alone, to subtract): one pass instead of one per candidate, all rows of one image (see
    ``repeat`` in :func:`traced`).
    """
    measured = {}
    for n, elements in tried.items():
        flips = [forced(n, set(chosen[n]) ^ ({e} - {None})) for e in (None, *elements)]
        origin, *flipped = rerun([n] * len(flips), {r: f for r, f in enumerate(flips) if f})
        measured[n] = (origin, flipped)
    return measured


def _diagnosis(batch, n, base, got, final, candidates, tried, chosen, calls32, calls64, limit) -> MapDiagnosis:
    flips = tuple(
        MaskFlip(
            calls32[c].label,
            tuple(int(i) for i in np.unravel_index(i, calls32[c].x.shape[1:])),
            float(calls32[c].x[n].flatten()[i]),
            float(calls64[c].x[n].flatten()[i]),
        )
        for c, i in chosen
    )
    residual = float(np.abs(final[n] - got[n]).max())
    return MapDiagnosis(
        batch=batch,
        sample=n,
        max_abs=float(np.abs(base[n] - got[n]).max()),
        candidates=candidates,
        tried=tried,
        flips=flips,
        residual=residual,
        explained=bool(flips) and residual <= limit,
    )


def _sides64(calls64: Sequence[GateCall], calls32: Sequence[GateCall], elements, n: int) -> dict[tuple[int, int], bool]:
    """Whether float64 puts each of sample ``n``'s ``elements`` (call, flat element) above its nearest breakpoint."""
    sides = {}
    for c in dict.fromkeys(c for c, _ in elements):
        index = [i for k, i in elements if k == c]
        x = calls64[c].x[n].reshape(-1)[index]
        above = x > nearest_breakpoint(x, calls32[c].breakpoints)
        sides.update(((c, i), bool(a)) for i, a in zip(index, above.tolist(), strict=True))
    return sides


def _candidates(
    calls32: Sequence[GateCall], calls64: Sequence[GateCall], n: int, across: Collection[tuple[int, int]] = ()
) -> list[tuple[int, int]]:
    """(call, flat element) pairs of sample ``n`` within float32 rounding of a breakpoint, likeliest to flip first.

    Another runtime computes the same float64 value with another float32 error of about the
    size of eager's: an element crosses when that error carries it from float64's value to the
    other side of the breakpoint. Hence the candidates: float64's value within :data:`MARGIN`
    times the tensor's largest float32 - float64 difference of a breakpoint, and the elements
    ``across`` (where eager float32 took the other side); the order: by float64's distance
    from the breakpoint in units of the tensor's RMS float32 - float64 difference. Nothing but
    that scale depends on how eager float32 rounded. On resnet50 ``layer3`` the elements ONNX
    Runtime flipped from float64's sides rank in the first 28 by this order (56 once).
    """
    found = []
    for c, (a, b) in enumerate(zip(calls32, calls64, strict=True)):
        error = (a.x.double() - b.x).square()
        margin = MARGIN * float(error.max().sqrt())
        scale = float(error.mean().sqrt()) or 1.0
        x = b.x[n].flatten()
        distance = (x - nearest_breakpoint(x, a.breakpoints)).abs()
        close = distance <= margin
        close[[i for k, i in across if k == c]] = True
        close = close.nonzero().flatten()
        found += [(float(d), c, int(i)) for d, i in zip(distance[close] / scale, close, strict=True)]
    return [(c, i) for _, c, i in sorted(found)]
