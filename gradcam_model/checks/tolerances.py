"""Parity tolerances: one table, one resolver (torch-free, so the CLI can show defaults cheaply)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["Tolerance", "TOLERANCES", "tolerance_for"]


@dataclass(frozen=True)
class Tolerance:
    """How far an artifact may stray from the eager reference.

    Each output passes when its difference is within the absolute tolerance *or*
    within ``noise_factor`` times the eager model's own float32 error (eager float32
    vs the same model in float64, measured on the same inputs). Random or
    badly conditioned models amplify rounding: on a calibrated random resnet50 at
    ``layer3`` eager float32 torch itself is 6.7e-3 off in raw maps, and torch with
    1 thread vs 2 threads differs as much; an artifact cannot be held tighter than that.
    For the maps the float32 error is taken with float64's ReLU masks: a mask element that
    flips between runtimes is no conditioning noise, and ``validate`` explains it by itself
    (see :mod:`gradcam_model.checks.maskflips`) or fails the map.

    Probabilities and scores are softmax of the logits, and softmax moves no entry by more
    than half the largest change of the logits (``|dp_i| <= 2 p_i (1 - p_i) max|dz| <= max|dz| / 2``).
    Once the logits pass, the difference they were allowed reaches the probabilities as is:
    their limit is also at least half the logits' measured max abs difference, however small
    the probabilities' own float32-vs-float64 measure (mvitv2_tiny: probabilities 1.0e-5
    with a noise of 4.7e-6, from logits well within theirs).
    """

    logits_rtol: float = 1e-4  # max |a - b| / max |b|
    probabilities_atol: float = 1e-5
    score_atol: float = 1e-5
    cam_atol: float = 1e-4
    guided_rtol: float = 1e-4  # guided methods' input-resolution gradient images: max |a - b| / max |b|
    noise_factor: float = 2.0  # 0 disables the allowance for the eager float32 error
    min_class_agreement: float = 1.0


# The one place tolerances live. Both runtimes reorder float32 reductions (ORT's
# NCHWc convolutions, libtorch's oneDNN paths): measured diffs are ~1e-6 on cams
# of well-conditioned models.
TOLERANCES: dict[str, Tolerance] = {"onnx": Tolerance(), "torchscript": Tolerance()}


def tolerance_for(fmt: str, **overrides: float) -> Tolerance:
    """The tolerance for artifact format ``fmt``, with any field overridden (CLI: --cam-atol ...)."""
    base = TOLERANCES.get(fmt, Tolerance())
    return Tolerance(**{**asdict(base), **{k: v for k, v in overrides.items() if v is not None}})
