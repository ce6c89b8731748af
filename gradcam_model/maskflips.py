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
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .methods import CAMMethod, get_method, postprocess

__all__ = [
    "MARGIN",
    "MAX_CANDIDATES",
    "MAX_ROUNDS",
    "Chosen",
    "MaskFlip",
    "MapDiagnosis",
    "Rerun",
    "Unclipped",
    "diagnose",
    "disagreements",
    "finish",
    "same_gates",
    "traced",
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
# The search over the measured elements' sets (see _Search.pick): its most steps, the steps
# without a better set after which it ends, and how many steps a changed element stays put.
# Enough for the 14 flips among 32 candidates on resnet50 layer3.
_STEPS, _PATIENCE, _TENURE = 40, 15, 10


def _arg(args, kwargs, i: int, name: str, default: float) -> float:
    return float(args[i]) if len(args) > i else float(kwargs.get(name, default))


def _relu(args, kwargs):
    return (0.0,), lambda x: (x > 0).to(x.dtype)


def _hardtanh(args, kwargs):
    lo, hi = _arg(args, kwargs, 1, "min_val", -1.0), _arg(args, kwargs, 2, "max_val", 1.0)
    return (lo, hi), lambda x: ((x > lo) & (x < hi)).to(x.dtype)


def _relu6(args, kwargs):
    return (0.0, 6.0), lambda x: ((x > 0) & (x < 6)).to(x.dtype)


def _hardswish(args, kwargs):
    return (-3.0, 3.0), lambda x: torch.where(x < -3, 0.0, torch.where(x > 3, 1.0, x / 3 + 0.5)).to(x.dtype)


def _hardsigmoid(args, kwargs):
    return (-3.0, 3.0), lambda x: ((x > -3) & (x < 3)).to(x.dtype) / 6


def _leaky_relu(args, kwargs):
    slope = _arg(args, kwargs, 1, "negative_slope", 0.01)
    return (0.0,), lambda x: torch.where(x > 0, 1.0, slope).to(x.dtype)


# Every entry point a ReLU-family gate is reached by: nn.ReLU calls F.relu, nn.ReLU6 F.hardtanh,
# torchvision's GoogLeNet and Inception call F.relu directly, some code torch.relu or x.relu_().
# Each maps to (breakpoints, derivative) read off the call's arguments.
_GATES: dict[Callable, Callable] = {
    F.relu: _relu,
    torch.relu: _relu,
    torch.relu_: _relu,
    torch.Tensor.relu: _relu,
    torch.Tensor.relu_: _relu,
    F.relu6: _relu6,
    F.hardtanh: _hardtanh,
    F.hardswish: _hardswish,
    F.hardsigmoid: _hardsigmoid,
    F.leaky_relu: _leaky_relu,
}


@dataclass
class _Call:
    label: str  # the innermost module running the gate, "#2" on its second call
    x: torch.Tensor  # the pre-activation, detached
    breakpoints: tuple[float, ...]


class _Gates(TorchFunctionMode):
    """Records every gate call after the target layer; flips the given elements' side of the breakpoint.

    A flipped element keeps its value (the gates are continuous) but takes the derivative of
    the other side: ``out.detach() + d_other * (x - x.detach())`` equals ``out`` and has
    gradient ``d_other``. Unflipped elements keep the gate's own backward, bit for bit.
    """

    def __init__(self, flips: dict[int, list[tuple[int, int]]]) -> None:
        super().__init__()
        self.flips = flips
        self.stack: list[str] = []  # names of the modules running
        self.start()

    def start(self) -> None:
        self.stack.clear()  # a pass that raised may have left names behind
        self.after = False  # set when the target layer returns
        self.calls: list[_Call] = []
        self._seen: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        gate = _GATES.get(func)
        # the CAM maths' own ReLU runs after the model: it gates no gradient
        if gate is None or not self.after or not self.stack or not args or not isinstance(args[0], torch.Tensor):
            return func(*args, **kwargs)
        x = args[0].clone()  # in-place gates overwrite their input
        out = func(*args, **kwargs)
        breakpoints, derivative = gate(args, kwargs)
        self.calls.append(_Call(self._label(), x.detach(), breakpoints))
        elements = self.flips.get(len(self.calls) - 1)
        if not elements:
            return out
        flip = torch.zeros(x.shape, dtype=torch.bool, device=x.device)
        for n, i in elements:
            if n < len(x):  # reference_cam may first run the first image alone (to count classes)
                flip[n].view(-1)[i] = True
        nearest = _nearest(x.detach(), breakpoints)
        other = torch.where(
            x.detach() > nearest, torch.nextafter(nearest, nearest - 1), torch.nextafter(nearest, nearest + 1)
        )
        flipped = out.detach() + derivative(other) * (x - x.detach())
        # a new tensor even for an in-place gate: code that drops an in-place gate's result
        # keeps the unflipped backward, which the residual then shows (never a false "explained")
        return torch.where(flip, flipped, out)

    def _label(self) -> str:
        label = self.stack[-1] if self.stack and self.stack[-1] else "(model)"
        self._seen[label] += 1
        n = self._seen[label]
        return label if n == 1 else f"{label}#{n}"


def _nearest(x: torch.Tensor, breakpoints: Sequence[float]) -> torch.Tensor:
    """The breakpoint nearest each element of ``x``."""
    points = torch.tensor(breakpoints, dtype=x.dtype, device=x.device)
    distance = (x.unsqueeze(-1) - points).abs()
    return points[distance.argmin(-1)]


@contextlib.contextmanager
def _watch(
    model: nn.Module, layer_name: str, flips: dict[int, list[tuple[int, int]]], repeat: int = 1
) -> Iterator[_Gates]:
    """The gate calls of ``model``'s last forward pass after ``layer_name``, named by module.

    Every forward pass starts the record afresh (``reference_cam`` runs the model once to
    list layers before the pass it explains). With ``repeat``, a one-image output of the
    layer goes on as that many rows. The hooks go on exit.
    """
    mode = _Gates(flips)

    def widen(_module, _inputs, output):
        if isinstance(output, torch.Tensor) and len(output) == 1:
            return output.repeat(repeat, *[1] * (output.dim() - 1))
        return None

    def enter(module, _inputs, name):
        if module is model:
            mode.start()
        mode.stack.append(name)

    def leave(module, _inputs, _output):
        mode.stack.pop()
        if module is layer:
            mode.after = True

    layer = model.get_submodule(layer_name)
    handles = [layer.register_forward_hook(widen)] if repeat > 1 else []
    try:
        for name, module in model.named_modules():
            handles.append(module.register_forward_pre_hook(functools.partial(enter, name=name)))
            handles.append(module.register_forward_hook(leave))
        with mode:
            yield mode
    finally:
        for handle in handles:
            handle.remove()


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


Chosen = dict[int, list[tuple[int, int]]]  # sample -> (gate call, flat element) pairs


def traced(
    run: Callable[[], list[np.ndarray]],
    model: nn.Module,
    layer_name: str,
    chosen: Chosen | None = None,
    *,
    repeat: int = 1,
) -> tuple[list[np.ndarray], list[_Call]]:
    """``run()`` (a reference pass of ``model``) with its gate calls recorded, the ``chosen`` elements flipped.

    With ``repeat``, ``run`` passes one image and the target layer's output goes on as
    ``repeat`` rows (``chosen`` by row): variants of one image that differ only after the
    layer share the layers before it. A layer whose output is not one tensor is left alone;
    ``run`` must not probe the layers (``reference_cam`` with a callable ``reshape``).
    """
    flips: dict[int, list[tuple[int, int]]] = {}
    for n, elements in (chosen or {}).items():
        for c, i in elements:
            flips.setdefault(c, []).append((n, i))
    with _watch(model, layer_name, flips, repeat) as mode:
        outputs = run()
    return outputs, mode.calls


def same_gates(calls32: Sequence[_Call], calls64: Sequence[_Call]) -> bool:
    """Whether two passes ran the same gates (they differ only with data-dependent control flow)."""
    return [(c.label, c.x.shape) for c in calls32] == [(c.label, c.x.shape) for c in calls64]


def disagreements(calls32: Sequence[_Call], calls64: Sequence[_Call], samples: Sequence[int]) -> Chosen:
    """Elements of ``samples`` on which float32 and float64 take different sides of a breakpoint."""
    found: Chosen = {}
    if not same_gates(calls32, calls64):
        return found
    for c, (a, b) in enumerate(zip(calls32, calls64, strict=True)):
        points = _nearest(a.x.double(), a.breakpoints)
        differ = (a.x.double() > points) != (b.x > points)
        for n in samples:
            found.setdefault(n, []).extend((c, int(i)) for i in differ[n].flatten().nonzero().flatten())
    return {n: e for n, e in found.items() if e}


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

    def saliency(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return self.method.saliency(activations, gradients)

    def __call__(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return self.saliency(activations, gradients)


def finish(saliency: np.ndarray | torch.Tensor, size: tuple[int, int] | None, normalize: bool):
    """Maps ``[N, K, H, W]`` from :class:`Unclipped` saliency ``[N, K, h, w]``: the ReLU, then :func:`postprocess`.

    Of the same type as ``saliency`` (a numpy array or a tensor).
    """
    if isinstance(saliency, np.ndarray):
        return finish(torch.from_numpy(saliency), size, normalize).numpy()
    return postprocess(torch.relu(saliency), size, normalize)


def diagnose(
    rerun: Rerun,
    calls32: Sequence[_Call],
    calls64: Sequence[_Call],
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
    first (:func:`_candidates`). Each round measures the next :data:`MAX_CANDIDATES` flipped one
    at a time (one row each) on top of the current set; a tabu search over every candidate
    measured so far (:meth:`_Search.pick`) picks the set whose summed saliency, finished,
    comes closest to ``got``;
    one pass of the original batch measures that set's residual (a set that does worse than
    the one before is dropped). Rounds go on while a residual exceeds ``limit``, up to
    :data:`MAX_ROUNDS`: explained when the last residual is within ``limit``.
    """
    comparable = same_gates(calls32, calls64)
    candidates = {n: _candidates(calls32, calls64, n) if comparable else [] for n in failing}
    # the saliency of ``base`` itself: eager rounds a batch of other rows differently, which
    # may put an element across (the single flips' rows), so sums start from the batch's own
    origin = rerun(list(range(len(base))), {}) if any(candidates.values()) else None
    searches = {n: _Search(got[n : n + 1], None if origin is None else origin[n], finish) for n in failing}
    final = base
    for round_ in range(MAX_ROUNDS):
        new = {n: c[round_ * MAX_CANDIDATES : (round_ + 1) * MAX_CANDIDATES] for n, c in candidates.items()}
        new = {n: c for n, c in new.items() if c and _error(final[n], got[n]) > limit}
        if not new:
            break
        for n, (origin, flipped) in _single_flips(rerun, new, {n: s.chosen for n, s in searches.items()}).items():
            searches[n].measure(new[n], origin, flipped)
        picks = {n: searches[n].pick() for n in new}
        if all(set(p) == set(searches[n].chosen) for n, p in picks.items()):
            continue
        trial = rerun(list(range(len(base))), {n: s.chosen for n, s in searches.items()} | picks)
        maps, final = finish(trial), final.copy()
        for n, p in picks.items():
            # the sum is a linearization: a set that does worse than the one before is dropped
            if _squared(maps[n], got[n]) < _squared(final[n], got[n]):
                searches[n].accept(p, trial[n])
                final[n] = maps[n]
    return [
        _diagnosis(batch, n, base, got, final, len(candidates[n]), s.tried, s.chosen, calls32, calls64, limit)
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


def _single_flips(rerun: Rerun, tried: Chosen, chosen: Chosen) -> dict[int, tuple[np.ndarray, list[np.ndarray]]]:
    """Each sample's saliency with its ``chosen`` flips, and with each of its ``tried`` elements flipped on top.

    The variants of a sample run as the rows of one batch (the first with the ``chosen`` flips
    alone, to subtract): one pass instead of one per candidate, all rows of one image (see
    ``repeat`` in :func:`traced`).
    """
    measured = {}
    for n, elements in tried.items():
        flips = [chosen[n] + ([] if e is None else [e]) for e in (None, *elements)]
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


def _candidates(calls32: Sequence[_Call], calls64: Sequence[_Call], n: int) -> list[tuple[int, int]]:
    """(call, flat element) pairs of sample ``n`` within float32 rounding of a breakpoint, likeliest to flip first.

    Another runtime computes the same float64 value with another float32 error of about the
    size of eager's: an element crosses when that error carries it from float64's value to the
    other side of the breakpoint than eager float32's. Hence the order: by float64's distance
    from the breakpoint on float32's side (negative where float64 already lies across), in
    units of the tensor's RMS float32 - float64 difference. On resnet50 ``layer3`` every
    element ONNX Runtime flipped ranks in the first 60 by distance of float32 alone, in the
    first 30 (57 once) by this order.
    """
    found = []
    for c, (a, b) in enumerate(zip(calls32, calls64, strict=True)):
        error = (a.x.double() - b.x).square()
        margin = MARGIN * float(error.max().sqrt())
        scale = float(error.mean().sqrt()) or 1.0
        x = a.x[n].flatten().double()
        point = _nearest(x, a.breakpoints)
        close = ((x - point).abs() <= margin).nonzero().flatten()
        side = torch.sign(x - point)[close]
        order = side * (b.x[n].flatten()[close] - point[close]) / scale
        found += [(float(o), c, int(i)) for o, i in zip(order, close, strict=True)]
    return [(c, i) for _, c, i in sorted(found)]
