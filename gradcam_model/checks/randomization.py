"""The model-randomization sanity check (Adebayo et al. 2018) for CAM methods.

A map that does not change when the classifier's weights are replaced by random ones
explains the input, not the model. :func:`randomization_check` re-initializes the
parameterized layers from the logits downward, cumulatively (the "cascade"), recomputes
the maps of the ORIGINAL model's classes and reports the Spearman rank correlation
between each original and randomized map. A method whose maps still correlate once
every layer above the target layer is random is flagged.

The maps come from the same traced graph the exporters write out (``GradCAMModel.graph``),
with its weight buffers swapped for the randomized ones: the graph holds each model
tensor as a buffer of its own and computes everything else from them, so the swap is
exact (tests compare it with ``reference_cam`` on the randomized model) and avoids one
export per cascade step and method (about a minute each for EfficientNet-Lite0).
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import GradCAMError, InputError
from ..graph._state import eval_state
from ..graph._trace_state import copy_model
from ..graph.probe import run_model

__all__ = [
    "FLAG_THRESHOLD",
    "CascadeStep",
    "RandomizationResult",
    "cascade_layers",
    "cascade_steps",
    "randomized_copy",
    "spearman",
    "randomization_check",
]

log = logging.getLogger(__name__)

# mean |rho| above which a method fails once every layer above the target layer is random;
# see docs/evaluate.md for the measured values it separates
FLAG_THRESHOLD = 0.5


@dataclass(frozen=True)
class CascadeStep:
    """One step of the cascade: ``layers`` re-initialized on top of every earlier step's."""

    index: int  # 0: the original model
    layers: tuple[str, ...]
    randomized: int  # parameterized layers random so far
    above_target: bool  # these layers run after the target layer's output


def _forward_order(model: nn.Module, image: torch.Tensor) -> list[str]:
    """Module names in the order their forward calls return (a module called twice: its last call)."""
    done: dict[str, None] = {}

    def record(name: str) -> None:
        done.pop(name, None)
        done[name] = None

    hooks = [m.register_forward_hook(lambda *_, name=name: record(name)) for name, m in model.named_modules()]
    try:
        with eval_state(model), torch.no_grad():
            run_model(model, image)
    finally:
        for h in hooks:
            h.remove()
    return list(done)


def cascade_layers(model: nn.Module, example_input: torch.Tensor) -> list[str]:
    """Layers with parameters of their own and a ``reset_parameters``, from the logits downward."""
    modules = dict(model.named_modules())
    layers = []
    for name in reversed(_forward_order(model, example_input[:1])):
        module = modules[name]
        if next(module.parameters(recurse=False), None) is None:
            continue
        if not callable(getattr(module, "reset_parameters", None)):
            log.warning("randomization check: %s (%s) has no reset_parameters; left as it is", name, type(module))
            continue
        layers.append(name)
    return layers


def cascade_steps(model: nn.Module, target_layer: str, example_input: torch.Tensor) -> list[CascadeStep]:
    """The cascade: step 0 is the model; each later step randomizes one more block, from the top.

    A block is a run of layers with the same parent module (a top-level layer is a block of
    its own), split where the layers cross the target layer.
    """
    order = _forward_order(model, example_input[:1])
    if target_layer not in order:
        raise InputError(f"target layer {target_layer!r} does not run in the model's forward pass")
    after = set(order[order.index(target_layer) + 1 :])
    steps = [CascadeStep(0, (), 0, True)]
    key = None
    for name in cascade_layers(model, example_input):
        parent = name.rpartition(".")[0]
        new_key = (parent or name, name in after)
        if new_key != key:
            key = new_key
            steps.append(CascadeStep(len(steps), (name,), steps[-1].randomized + 1, name in after))
        else:
            last = steps[-1]
            steps[-1] = CascadeStep(last.index, (*last.layers, name), last.randomized + 1, last.above_target)
    return steps


def _reset(module: nn.Module, seed: int) -> None:
    with torch.random.fork_rng(devices=[]):  # the caller's RNG stream stays as it was
        torch.manual_seed(seed)
        module.reset_parameters()


def randomized_copy(model: nn.Module, layers: Sequence[str], *, seed: int = 0) -> nn.Module:
    """A copy of ``model`` with ``layers`` re-initialized by their default init (layer i seeded ``seed + i``)."""
    clone = copy_model(model)
    modules = dict(clone.named_modules())
    with torch.no_grad():
        for i, name in enumerate(layers):
            _reset(modules[name], seed + i)
    return clone


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks of a 1-D array, ties sharing their average rank (a ReLU'd map has many zeros)."""
    order = np.argsort(x, kind="stable")
    ordered = x[order]
    first = np.r_[True, ordered[1:] != ordered[:-1]]
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(x)]
    ranks = np.empty(len(x))
    ranks[order] = ((starts + ends - 1) / 2.0)[np.cumsum(first) - 1]
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two maps; NaN when either is flat (no ranking to compare)."""
    ra, rb = _ranks(np.ravel(a).astype(np.float64)), _ranks(np.ravel(b).astype(np.float64))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


@dataclass(frozen=True)
class RandomizationResult:
    """Rank correlations between original and randomized maps, per method, cascade step and image.

    ``rho[method]`` is ``[steps, N]``. An image whose original map is flat has no ranking
    and is left out (NaN); a randomized map that is flat shares no ranking with the
    original and counts as 0. Maps are ReLU'd, so the paper's absolute value of the
    map changes nothing; the summary is the mean of ``|rho|`` over the images.
    """

    target_layer: str
    steps: tuple[CascadeStep, ...]
    rho: dict[str, np.ndarray]
    classes: np.ndarray
    threshold: float = FLAG_THRESHOLD

    @property
    def head_step(self) -> int:
        """The step after which every layer above the target layer is random (at least 1)."""
        above = [s.index for s in self.steps[1:] if s.above_target]
        return max(above, default=1)

    def mean_abs_rho(self, method: str) -> np.ndarray:
        """Mean ``|rho|`` over the images at each step (step 0: 1)."""
        with np.errstate(all="ignore"):
            return np.nanmean(np.abs(self.rho[method]), axis=1)

    @property
    def flagged(self) -> list[str]:
        """Methods whose mean ``|rho|`` at :attr:`head_step` exceeds the threshold: they fail the check."""
        return [m for m in self.rho if not self.mean_abs_rho(m)[self.head_step] <= self.threshold]

    def table(self) -> str:
        """Markdown: one row per cascade step, one column of mean ``|rho|`` per method."""
        methods = list(self.rho)
        rows = [
            "| step | randomized (from the top) | layers | " + " | ".join(methods) + " |",
            "|---:|---|---:|" + "---:|" * len(methods),
        ]
        means = {m: self.mean_abs_rho(m) for m in methods}
        for s in self.steps:
            what = "none (original)" if s.index == 0 else _describe(s.layers)
            if s.index == self.head_step:
                what += " (flag step)"
            cells = " | ".join(f"{means[m][s.index]:.3f}" for m in methods)
            rows.append(f"| {s.index} | {what} | {s.randomized} | {cells} |")
        verdict = ", ".join(f"{m} FAILS" if m in self.flagged else f"{m} passes" for m in methods)
        rows.append("")
        rows.append(f"mean |rho| at step {self.head_step} above {self.threshold:g} fails the check: {verdict}")
        return "\n".join(rows)

    def to_dict(self) -> dict:
        return {
            "target_layer": self.target_layer,
            "threshold": self.threshold,
            "flag_step": self.head_step,
            "flagged": self.flagged,
            "classes": self.classes.tolist(),
            "steps": [
                {
                    "index": s.index,
                    "layers": list(s.layers),
                    "randomized": s.randomized,
                    "above_target": s.above_target,
                    "mean_abs_rho": {m: _finite(self.mean_abs_rho(m)[s.index]) for m in self.rho},
                    "rho": {m: [_finite(v) for v in self.rho[m][s.index]] for m in self.rho},
                }
                for s in self.steps
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


def _finite(value) -> float | None:
    return None if not np.isfinite(value) else round(float(value), 6)


def _describe(layers: Sequence[str]) -> str:
    if len(layers) == 1:
        return f"`{layers[0]}`"
    parent = layers[0].rpartition(".")[0]
    return f"`{parent}` ({len(layers)} layers)"


def _buffer_names(model: nn.Module) -> dict[str, str]:
    """Model tensor name -> the traced graph's buffer holding it (``capture._finalize`` names them)."""
    named = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    seen: dict[int, str] = {}
    names = {}
    for name, tensor in named:
        attr = seen.setdefault(id(tensor), "p_" + name.replace(".", "_"))
        names[name] = attr
    return names


def _maps(graph, images: torch.Tensor, classes: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return graph(images, classes)[4][:, 0].cpu().numpy()


def randomization_check(
    model: nn.Module,
    images,
    wrappers: Mapping[str, nn.Module],
    *,
    seed: int = 0,
    threshold: float = FLAG_THRESHOLD,
    progress: Callable[[str], None] | None = None,
) -> RandomizationResult:
    """Cascading randomization of ``model`` from the logits down; rank correlations of the maps.

    Args:
        model: the trained classifier the wrappers were built from. Left unchanged.
        images: normalized float ``[N, 3, H, W]`` (array or tensor) that the wrappers accept.
        wrappers: method name -> ``GradCAMModel`` built with ``class_input=True`` (the
            explained class must stay the original model's top class), all at one layer.
        seed: seeds each layer's re-initialization.
        threshold: mean ``|rho|`` above which a method fails (see :data:`FLAG_THRESHOLD`).
        progress: called with a short line per step.
    """
    if not wrappers:
        raise InputError("the randomization check needs at least one method")
    if any(not w.class_input for w in wrappers.values()):
        raise InputError("the randomization check needs wrappers built with class_input=True")
    layers = {w.target_layer for w in wrappers.values()}
    if len(layers) != 1:
        raise InputError(f"the wrappers explain different layers: {sorted(layers)}")
    target = layers.pop()
    first = next(iter(wrappers.values()))
    device = next(first.graph.buffers()).device
    images = torch.as_tensor(np.asarray(images, dtype=np.float32)).to(device)
    steps = cascade_steps(model, target, images)
    with torch.inference_mode():
        top = first.graph(images, torch.full((len(images),), -1, dtype=torch.long, device=device))
    classes = top[2][:, 0].clone()
    graphs = {m: copy.deepcopy(w.graph) for m, w in wrappers.items()}
    originals = {m: _maps(g, images, classes) for m, g in graphs.items()}
    rho = {m: np.ones((len(steps), len(images))) for m in graphs}
    for m, cams in originals.items():
        flat = np.ptp(cams.reshape(len(cams), -1), axis=1) == 0
        rho[m][:, flat] = np.nan
    random_model = copy_model(model)
    modules = dict(random_model.named_modules())
    buffers = _buffer_names(random_model)
    position = 0
    for step in steps[1:]:
        if progress:
            progress(f"randomization step {step.index}/{len(steps) - 1}: {_describe(step.layers)}")
        with torch.no_grad():
            for name in step.layers:
                _reset(modules[name], seed + position)
                position += 1
            changed = {
                buffers[f"{name}.{key}"]: value
                for name in step.layers
                for key, value in [
                    *modules[name].named_parameters(recurse=False),
                    *modules[name].named_buffers(recurse=False),
                ]
            }
            for graph in graphs.values():
                own = dict(graph.named_buffers())
                for attr, value in changed.items():
                    if attr not in own:  # keeping the trained tensor would give a wrong map
                        raise GradCAMError(f"the traced graph holds no buffer {attr!r} to randomize")
                    own[attr].copy_(value)
        for m, graph in graphs.items():
            cams = _maps(graph, images, classes)
            for i in range(len(images)):
                if np.isnan(rho[m][0, i]):
                    continue
                r = spearman(originals[m][i], cams[i])
                rho[m][step.index, i] = 0.0 if np.isnan(r) else r
    return RandomizationResult(target, tuple(steps), rho, classes.cpu().numpy(), threshold)
