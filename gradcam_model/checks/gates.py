"""Gating elements after the target layer: ReLU-family gate calls recorded, and some taken on the other side.

:func:`traced` runs a reference pass with every ReLU-family gate after the target layer
recorded (its pre-activation, module and breakpoints) and, if asked, chosen elements
flipped: such an element keeps its value but takes the derivative of the other side of its
breakpoint. :mod:`gradcam_model.checks.maskflips` uses it to show that a map's difference comes from
elements within float32 rounding of a breakpoint.
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

__all__ = ["Chosen", "GateCall", "disagreements", "nearest_breakpoint", "same_gates", "traced"]


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
class GateCall:
    """One gate call after the target layer: where it ran, its input, its breakpoints."""

    label: str  # the innermost module running the gate, "#2" on its second call
    x: torch.Tensor  # the pre-activation, detached
    breakpoints: tuple[float, ...]


class _Gates(TorchFunctionMode):
    """Records every gate call after the target layer; flips the given elements' side of the breakpoint
    (toggled, or to a given side: see ``Chosen``).

    A flipped element keeps its value (the gates are continuous) but takes the derivative of
    the other side: ``out.detach() + d_other * (x - x.detach())`` equals ``out`` and has
    gradient ``d_other``. Unflipped elements keep the gate's own backward, bit for bit.
    """

    def __init__(self, flips: dict[int, list[tuple]]) -> None:
        super().__init__()
        self.flips = flips
        self.stack: list[str] = []  # names of the modules running
        self.start()

    def start(self) -> None:
        self.stack.clear()  # a pass that raised may have left names behind
        self.after = False  # set when the target layer returns
        self.calls: list[GateCall] = []
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
        self.calls.append(GateCall(self._label(), x.detach(), breakpoints))
        elements = self.flips.get(len(self.calls) - 1)
        if not elements:
            return out
        nearest = nearest_breakpoint(x.detach(), breakpoints)
        above = x.detach() > nearest
        elements = [e for e in elements if e[0] < len(x)]  # reference_cam may first run the first image alone
        rows = torch.tensor([e[0] for e in elements], dtype=torch.long, device=x.device)
        index = torch.tensor([e[1] for e in elements], dtype=torch.long, device=x.device)
        # a toggle flips the element whatever side it lies on; a side (True: above the breakpoint)
        # flips it where this pass put it on the other one
        want = torch.tensor([e[2] if len(e) > 2 else True for e in elements], dtype=torch.bool, device=x.device)
        toggle = torch.tensor([len(e) == 2 for e in elements], dtype=torch.bool, device=x.device)
        flip = torch.zeros(x.shape, dtype=torch.bool, device=x.device)
        flip.view(len(x), -1)[rows, index] = toggle | (above.reshape(len(x), -1)[rows, index] != want)
        other = torch.where(above, torch.nextafter(nearest, nearest - 1), torch.nextafter(nearest, nearest + 1))
        flipped = out.detach() + derivative(other) * (x - x.detach())
        # a new tensor even for an in-place gate: code that drops an in-place gate's result
        # keeps the unflipped backward, which the residual then shows (never a false "explained")
        return torch.where(flip, flipped, out)

    def _label(self) -> str:
        label = self.stack[-1] if self.stack and self.stack[-1] else "(model)"
        self._seen[label] += 1
        n = self._seen[label]
        return label if n == 1 else f"{label}#{n}"


def nearest_breakpoint(x: torch.Tensor, breakpoints: Sequence[float]) -> torch.Tensor:
    """The breakpoint nearest each element of ``x``."""
    points = torch.tensor(breakpoints, dtype=x.dtype, device=x.device)
    distance = (x.unsqueeze(-1) - points).abs()
    return points[distance.argmin(-1)]


@contextlib.contextmanager
def _watch(model: nn.Module, layer_name: str, flips: dict[int, list[tuple]], repeat: int = 1) -> Iterator[_Gates]:
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


# sample -> (gate call, flat element) pairs, each flipped to the other side of the side this pass
# puts it on, or (gate call, flat element, side) triples: the element takes that side (True:
# above its nearest breakpoint) whatever side this pass puts it on
Chosen = dict[int, list[tuple[int, int]] | list[tuple[int, int, bool]]]


def traced(
    run: Callable[[], list[np.ndarray]],
    model: nn.Module,
    layer_name: str,
    chosen: Chosen | None = None,
    *,
    repeat: int = 1,
) -> tuple[list[np.ndarray], list[GateCall]]:
    """``run()`` (a reference pass of ``model``) with its gate calls recorded, the ``chosen`` elements flipped.

    With ``repeat``, ``run`` passes one image and the target layer's output goes on as
    ``repeat`` rows (``chosen`` by row): variants of one image that differ only after the
    layer share the layers before it. A layer whose output is not one tensor is left alone;
    ``run`` must not probe the layers (``reference_cam`` with a callable ``reshape``).
    """
    flips: dict[int, list[tuple]] = {}
    for n, elements in (chosen or {}).items():
        for c, i, *side in elements:
            flips.setdefault(c, []).append((n, i, *side))
    with _watch(model, layer_name, flips, repeat) as mode:
        outputs = run()
    return outputs, mode.calls


def same_gates(calls32: Sequence[GateCall], calls64: Sequence[GateCall]) -> bool:
    """Whether two passes ran the same gates (they differ only with data-dependent control flow)."""
    return [(c.label, c.x.shape) for c in calls32] == [(c.label, c.x.shape) for c in calls64]


def disagreements(calls32: Sequence[GateCall], calls64: Sequence[GateCall], samples: Sequence[int]) -> Chosen:
    """Elements of ``samples`` on which float32 and float64 take different sides of a breakpoint."""
    found: Chosen = {}
    if not same_gates(calls32, calls64):
        return found
    for c, (a, b) in enumerate(zip(calls32, calls64, strict=True)):
        points = nearest_breakpoint(a.x.double(), a.breakpoints)
        differ = (a.x.double() > points) != (b.x > points)
        for n in samples:
            found.setdefault(n, []).extend((c, int(i)) for i in differ[n].flatten().nonzero().flatten())
    return {n: e for n, e in found.items() if e}
