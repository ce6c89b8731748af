"""Scoring one chunk of images for :func:`gradcam_model.runtime.evaluate.evaluate`: the artifact's own maps, then
each baseline's, through the same artifact (the definitions are in :mod:`.evaluate`'s docstring)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..contract import ArtifactMetadata
from ..errors import ArtifactError
from .baselines import baseline_maps, feature_grid
from .boxes import Box
from .explainer import Explainer
from .perturbation import PerturbationOptions, pointing, score_maps

__all__ = ["Scoring"]


def _probabilities(value, batch: int, meta: ArtifactMetadata, path) -> np.ndarray:
    array = None if value is None else np.asarray(value)
    if array is None or array.shape != (batch, meta.num_classes) or not np.isfinite(array).all():
        shape = None if array is None else array.shape
        raise ArtifactError(
            f"{path} returns no class probabilities (got {shape}, expected [{batch}, {meta.num_classes}] "
            "finite values in its 'probabilities' output); evaluate needs them: export it with gradcam_model"
        )
    return array.astype(np.float64)


def _explained(explainer: Explainer, images: np.ndarray, target, batch_size: int, bar):
    """The first pass: ``Y_c``, the classes and the maps of every image."""
    probs, classes, maps = [], [], []
    for start in range(0, len(images), batch_size):
        part = slice(start, start + batch_size)
        result = explainer(images[part], None if target is None else target[part])
        p = _probabilities(result.probabilities, len(images[part]), explainer.metadata, explainer.path)
        c = np.asarray(result.class_index)[:, 0].astype(np.int64)
        probs.append(p[np.arange(len(c)), c])
        classes.append(c)
        maps.append(np.asarray(result.cam, dtype=np.float32)[:, 0])
        bar.update(len(c))
    return np.concatenate(probs), np.concatenate(classes), np.concatenate(maps)


@dataclass(frozen=True)
class Scoring:
    """Scores one chunk of images: the method's maps, then each baseline's, through the same artifact."""

    explainer: Explainer
    options: PerturbationOptions
    baselines: tuple[str, ...]
    random_draws: int
    boxes: list[list[Box]] | None  # per image of the whole run, or None without the pointing game
    tolerance: float

    def chunk(self, array: np.ndarray, rows: np.ndarray, target, grid, bar) -> tuple[dict, tuple | None]:
        """``(part, grid)``: the chunk's classes, probabilities and scores; the random baseline's grid, found
        from the first chunk's maps that are not flat (input / 32 when all are)."""
        y, classes, maps = _explained(self.explainer, array, target, self.options.batch_size, bar)
        flat = np.ptp(maps.reshape(len(maps), -1), axis=1) == 0
        if grid is None and "random" in self.baselines:
            h, w = maps.shape[1:]
            grid = feature_grid(maps[~flat]) if (~flat).any() else (max(1, h // 32), max(1, w // 32))
        part = {"rows": rows, "y": y, "classes": classes, "constant": flat}
        part["method"] = self._scored(array, maps, rows, classes, y, bar)
        for name in self.baselines:
            draws = self.random_draws if name == "random" else 1
            results = [
                self._scored(array, baseline_maps(name, maps, draw=d, grid=grid, seed=int(rows[0])), rows, classes, y,
                             bar)
                for d in range(draws)
            ]  # fmt: skip
            part[name] = _average(results)
        return part, grid

    def _scored(self, array, maps, rows, classes, y, bar):
        meta, path = self.explainer.metadata, self.explainer.path
        scores, curves = score_maps(self.explainer, array, maps, classes, y, self.options, bar,
                                    lambda r, k: _probabilities(r.probabilities, k, meta, path))  # fmt: skip
        if self.boxes is not None:
            flat = np.ptp(maps.reshape(len(maps), -1), axis=1) == 0
            scores["pointing_game"] = pointing(maps, flat, [self.boxes[r] for r in rows], self.tolerance)
        return scores, curves


def _average(results):
    """The per-image mean of several draws' scores and curves."""
    scores = {m: np.mean([s[m] for s, _ in results], axis=0) for m in results[0][0]}
    curves = {k: np.mean([c[k] for _, c in results], axis=0) for k in results[0][1]}
    return scores, curves
