"""The benchmark configurations (model, target layer, size, batch) and the targets their results must meet."""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

from .._suggest import close_matches
from ..errors import GradCAMError

__all__ = ["BenchConfig", "CONFIGS", "QUICK_CONFIGS", "UnknownConfigError", "select_configs"]

_QUICK_SIZE, _QUICK_BATCH = 64, 2


class UnknownConfigError(GradCAMError, ValueError):
    """A ``--config`` name that matches no benchmark configuration."""


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark setting and the targets its results are checked against.

    ``arch`` is a torchvision model name, or ``timm:<name>`` for a timm model.
    ``max_overhead`` bounds ORT Grad-CAM / ORT logits-only; ``min_speedups`` pairs a
    contestant with the factor by which the ORT Grad-CAM artifact must beat it;
    ``max_export_ratio`` bounds (build + ONNX export of the Grad-CAM artifact) / the
    plain logits-only ``torch.onnx.export`` of the same model.
    """

    arch: str
    layer: str
    size: int
    batch: int
    num_classes: int = 1000
    max_overhead: float | None = None
    min_speedups: tuple[tuple[str, float], ...] = ()
    max_export_ratio: float | None = 3.0

    @property
    def name(self) -> str:
        return f"{self.arch.split(':')[-1]}-{self.layer}-{self.size}-b{self.batch}"

    def quick(self) -> BenchConfig:
        """The same model and layer at the quick mode's tiny size and batch."""
        return dataclasses.replace(self, size=min(self.size, _QUICK_SIZE), batch=_QUICK_BATCH)


_LIBRARY_TARGETS = (("pytorch_grad_cam", 4.0), ("captum", 2.5))

CONFIGS: tuple[BenchConfig, ...] = (
    BenchConfig("resnet50", "layer4", 224, 1, max_overhead=1.10),
    BenchConfig("resnet50", "layer4", 224, 8, max_overhead=1.10, min_speedups=_LIBRARY_TARGETS),
    # the original Grad-CAM write-up's setup: 10 classes at 128 px
    BenchConfig("vgg19", "features", 128, 8, num_classes=10, max_overhead=1.10, min_speedups=_LIBRARY_TARGETS),
    BenchConfig("resnet50", "layer3", 224, 8),
    BenchConfig("mobilenet_v3_large", "features", 224, 8, max_overhead=1.10),
    BenchConfig("mobilenet_v3_large", "features.12", 224, 8, max_overhead=1.6),
    BenchConfig("timm:efficientnet_lite0", "bn2", 224, 8, max_overhead=1.10),
)
QUICK_CONFIGS: tuple[BenchConfig, ...] = (BenchConfig("resnet18", "layer4", _QUICK_SIZE, _QUICK_BATCH, num_classes=10),)


def select_configs(names: Sequence[str] | None, *, quick: bool = False) -> list[BenchConfig]:
    """Configurations by name or shell pattern (``resnet50-*``); all (or the quick set) when none.

    With ``quick`` the chosen configurations run at the quick mode's size and batch
    (named accordingly); without names, quick mode runs :data:`QUICK_CONFIGS`.
    """
    if not names:
        return list(QUICK_CONFIGS) if quick else list(CONFIGS)
    known = {c.name: c for c in (*CONFIGS, *QUICK_CONFIGS)}
    chosen: list[BenchConfig] = []
    for pattern in names:
        matches = [c for n, c in known.items() if fnmatch.fnmatchcase(n, pattern)]
        if not matches:
            close = close_matches(pattern, known, cutoff=0.5, ignore_case=False)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise UnknownConfigError(
                f"no benchmark configuration matches {pattern!r}.{hint} "
                f"Known: {', '.join(known)} (shell patterns such as 'resnet50-*' work too)."
            )
        chosen.extend(c for c in matches if c not in chosen)
    return [c.quick() for c in chosen] if quick else chosen
