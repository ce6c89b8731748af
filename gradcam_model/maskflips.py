"""Why a map differs: gating elements (ReLU masks...) that sit within float32 rounding of a breakpoint.

The derivative of a ReLU-family gate jumps at its breakpoint (0 for ReLU). A pre-activation
that lands within float32 rounding of the breakpoint falls on either side depending on the
order a runtime sums in, and every gradient behind that element, hence the map, moves: by
~1e-2 on resnet18 at ``layer3`` for one element of thousands, while the logits agree to 1e-6.
Both sides are right to float32 precision. :func:`diagnose` finds such elements between the
target layer and the logits in the eager reference (float32 pre-activations against float64)
and shows the cause instead of assuming it: the eager map recomputed with some of them flipped
to the other side must reproduce the artifact's map within the plain tolerance.
"""

from __future__ import annotations

import contextlib
import functools
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = [
    "MARGIN",
    "MAX_CANDIDATES",
    "Chosen",
    "MaskFlip",
    "MapDiagnosis",
    "Rerun",
    "diagnose",
    "disagreements",
    "same_gates",
    "traced",
]

# An element is a candidate when its float32 pre-activation lies within MARGIN times the
# largest |float32 - float64| of its tensor from a breakpoint. That difference is what float32
# rounding did to this tensor in eager torch, accumulated over every layer before it; a runtime
# that sums in another order makes an error of the same size, not the same error (the element
# ONNX Runtime flips on resnet18 layer3 is one torch float32 and float64 agree on), hence a margin.
MARGIN = 4.0
# Candidates tried per sample, closest to their breakpoint first (each one row of an eager batch).
MAX_CANDIDATES = 16


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
def _watch(model: nn.Module, layer_name: str, flips: dict[int, list[tuple[int, int]]]) -> Iterator[_Gates]:
    """The gate calls of ``model``'s last forward pass after ``layer_name``, named by module.

    Every forward pass starts the record afresh (``reference_cam`` runs the model once to
    list layers before the pass it explains). The hooks go on exit.
    """
    mode = _Gates(flips)

    def enter(module, _inputs, name):
        if module is model:
            mode.start()
        mode.stack.append(name)

    def leave(module, _inputs, _output):
        mode.stack.pop()
        if module is layer:
            mode.after = True

    layer = model.get_submodule(layer_name)
    handles = []
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
    candidates: int  # gating elements within float32 rounding of a breakpoint (the closest MAX_CANDIDATES tried)
    flips: tuple[MaskFlip, ...]  # those flipped to reproduce the artifact
    residual: float  # max |artifact - eager float32 with them flipped|
    explained: bool

    def describe(self) -> str:
        where = f"batch {self.batch} sample {self.sample}: max abs {self.max_abs:.3g}"
        if not self.candidates:
            return f"{where}; no mask element within float32 rounding of a breakpoint"
        near = f"{self.candidates} mask element(s) within float32 rounding of a breakpoint"
        if self.candidates > MAX_CANDIDATES:
            near += f" ({MAX_CANDIDATES} closest tried)"
        if not self.flips:
            return f"{where}; {near}, flipping none of them brings the reference closer"
        at = ", ".join(dict.fromkeys(f.at for f in self.flips))
        return f"{where}; {near}, {len(self.flips)} flipped at {at}: the reference matches to {self.residual:.3g}"


Chosen = dict[int, list[tuple[int, int]]]  # sample -> (gate call, flat element) pairs


def traced(
    run: Callable[[], list[np.ndarray]], model: nn.Module, layer_name: str, chosen: Chosen | None = None
) -> tuple[list[np.ndarray], list[_Call]]:
    """``run()`` (a reference pass of ``model``) with its gate calls recorded, the ``chosen`` elements flipped."""
    flips: dict[int, list[tuple[int, int]]] = {}
    for n, elements in (chosen or {}).items():
        for c, i in elements:
            flips.setdefault(c, []).append((n, i))
    with _watch(model, layer_name, flips) as mode:
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


def diagnose(
    rerun: Rerun,
    calls32: Sequence[_Call],
    calls64: Sequence[_Call],
    base: np.ndarray,
    got: np.ndarray,
    failing: Sequence[int],
    limit: float,
    *,
    batch: int = 0,
) -> list[MapDiagnosis]:
    """Explain the artifact's maps ``got`` ``[N, K, H, W]`` of samples ``failing`` by mask flips.

    ``base`` are the eager float32 maps, whose pass recorded ``calls32`` (``calls64``: the
    float64 pass); ``rerun(rows, chosen)`` recomputes the maps of the batch made of samples
    ``rows`` (repeats allowed) with the chosen elements of each row flipped. Candidates are the
    gating elements after the target layer within :data:`MARGIN` float32 rounding of a
    breakpoint; the closest are flipped one at a time (one row each), a set is picked greedily
    from those single flips, and one pass of the original batch with exactly that set flipped
    measures the residual: explained when it is within ``limit``.
    """
    comparable = same_gates(calls32, calls64)
    candidates = {n: _candidates(calls32, calls64, n) if comparable else [] for n in failing}
    tried = {n: c[:MAX_CANDIDATES] for n, c in candidates.items()}
    singles = _single_flips(rerun, base, tried)
    chosen = {n: [c[j] for j in _pick(base[n], singles[n], got[n])] for n, c in tried.items()}
    final = rerun(list(range(len(base))), chosen) if any(chosen.values()) else base
    return [
        _diagnosis(batch, n, base, got, final, len(candidates[n]), chosen[n], calls32, calls64, limit) for n in failing
    ]


def _single_flips(rerun: Rerun, base: np.ndarray, tried: Chosen) -> dict[int, list[np.ndarray]]:
    """Each sample's maps with each of its candidates flipped alone, as the change added to ``base``.

    The variants run as rows of batches of up to MAX_CANDIDATES + 1 (one unflipped row per sample to
    subtract): one pass instead of one per candidate.
    """
    rows = [(n, e) for n, elements in tried.items() if elements for e in (None, *elements)]
    maps = []
    for start in range(0, len(rows), MAX_CANDIDATES + 1):
        chunk = rows[start : start + MAX_CANDIDATES + 1]
        flips = {r: [e] for r, (_, e) in enumerate(chunk) if e is not None}
        maps += list(rerun([n for n, _ in chunk], flips))
    singles: dict[int, list[np.ndarray]] = {n: [] for n in tried}
    unflipped = {}
    for (n, e), m in zip(rows, maps, strict=True):
        if e is None:
            unflipped[n] = m
        else:
            singles[n].append(base[n] + (m - unflipped[n]))
    return singles


def _diagnosis(batch, n, base, got, final, candidates, chosen, calls32, calls64, limit) -> MapDiagnosis:
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
        flips=flips,
        residual=residual,
        explained=bool(flips) and residual <= limit,
    )


def _candidates(calls32: Sequence[_Call], calls64: Sequence[_Call], n: int) -> list[tuple[int, int]]:
    """(call, flat element) pairs of sample ``n`` within float32 rounding of a breakpoint, closest first."""
    found = []
    for c, (a, b) in enumerate(zip(calls32, calls64, strict=True)):
        margin = MARGIN * float((a.x.double() - b.x).abs().max())
        x = a.x[n].flatten().double()
        distance = (x - _nearest(x, a.breakpoints)).abs()
        close = (distance <= margin).nonzero().flatten()
        found += [(float(distance[i]) / margin if margin else 0.0, c, int(i)) for i in close]
    return [(c, i) for _, c, i in sorted(found)]


def _pick(base: np.ndarray, singles: list[np.ndarray], got: np.ndarray) -> list[int]:
    """Greedily the single flips whose summed effects bring ``base`` closest to ``got``.

    Closest in squared error: the max difference alone would not see a flip that fixes one
    part of a map while another part is wrong for other reasons.
    """
    current, picked = base.astype(np.float64), []
    error = float(np.square(current - got).sum())
    while True:
        trials = [
            (float(np.square(current + s - base - got).sum()), j) for j, s in enumerate(singles) if j not in picked
        ]
        if not trials or min(trials)[0] >= error:
            return picked
        error, j = min(trials)
        current = current + singles[j] - base
        picked.append(j)
