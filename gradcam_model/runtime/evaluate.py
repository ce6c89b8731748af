"""Score an artifact's own maps against baseline maps: Average Drop, Increase in Confidence, deletion/insertion
AUC, ROAD, pointing game.

Every perturbed image goes through the same artifact, in batches; numpy, ONNX Runtime
and OpenCV only. The explained class ``c`` of image ``x`` is the artifact's top class
(``k = 0``), or the class given to a class-input artifact; its map ``M`` is the
artifact's ``cam[:, 0]`` (upsampled to the input size and min-max normalized to
``[0, 1]``, as the contract says). ``Y_c = p_c(x)`` is the artifact's ``probabilities``
output for that class; every metric reads the probability of the same class ``c``.

Definitions, per image (:meth:`Evaluation.summary` averages them over the images):

- **Average Drop** (Chattopadhyay et al. 2018, Grad-CAM++, arXiv:1710.11063):
  ``max(0, Y_c - O_c) / Y_c`` with ``O_c = p_c(x * M)``, the explanation map being the
  *normalized* input times the map, as torch-cam's ``ClassificationMetric`` and
  pytorch-grad-cam's ``CamMultImageConfidenceChange`` compute it. A fraction in
  ``[0, 1]``, as in torch-cam's published table (the paper prints it times 100);
  torch-cam divides by ``Y_c + 1e-7``, we by ``Y_c`` (NaN when ``Y_c`` is 0).
  Lower is better.
- **Increase in Confidence** (same paper): ``1`` if ``O_c > Y_c`` else ``0``; the mean is
  the fraction of images whose confidence rose. Higher is better.
- **Deletion** and **insertion** (Petsiuk et al. 2018, RISE, arXiv:1806.07421): pixels
  are ranked by ``M``, descending, ties in raster order (a stable sort); at step
  ``s = 0..S`` the first ``n_s = floor(s * H * W / S)`` pixels (all channels) are
  replaced by the baseline (deletion, starting from ``x``) or revealed from ``x``
  (insertion, starting from the baseline). The curve is ``p_c`` at each step; the
  score is its area by the trapezoid rule over the fraction axis ``s / S`` in ``[0, 1]``.
  Deletion: lower is better; insertion: higher is better. Baselines, in the
  normalized input space at the artifact's input size: ``blur`` (RISE's substrate: a
  Gaussian blur of ``x``, 11x11 kernel, sigma 5, OpenCV's reflected border) or ``mean``
  (the dataset mean colour of the artifact's metadata, i.e. 0 after normalization:
  RISE's deletion substrate).
- **Pointing game** (Zhang et al. 2016, Excitation Backprop, arXiv:1608.00507): a hit
  (1) when the centre of the map's maximum pixel (the first in raster order) lies
  within ``tolerance`` pixels (Euclidean, default 15, in input pixels) of one of the
  image's boxes, else a miss (0); only for images that have boxes (NaN otherwise).
  A constant map (all zeros, say) points nowhere and counts as a miss.
- **ROAD** (Rong et al. 2022, arXiv:2202.00449), as pytorch-grad-cam's
  ``ROADMostRelevantFirstAverage``, ``ROADLeastRelevantFirstAverage`` and ``ROADCombined``
  with the softmax probability as target: for each percentile ``p`` (default 10, ..., 90)
  the pixels at or above the map's ``p``-th percentile (``road_morf``) or at or below the
  ``(100 - p)``-th (``road_lerf``) are removed and imputed from their neighbours
  (:mod:`.road`); the score is the mean over the percentiles of ``p_c(x') - p_c(x)``.
  ``road_morf``: lower is better (removing the relevant pixels hurts); ``road_lerf``:
  higher is better; ``road_combined = (road_lerf - road_morf) / 2``: higher is better.
  NaN for a map where a percentile keeps no pixel (a flat map, or more zeros than the
  lowest percentile for MoRF): upstream's system is singular there too.

Baseline maps (:mod:`.baselines`: smooth random, centre prior, inverted) go through the
same metrics, and :meth:`Evaluation.margins` gives each metric's margin over the best
baseline with a bootstrap interval and a verdict. Images are decoded and scored in
chunks (a small decode pool reads ahead), so memory does not grow with their number; a
picture that cannot be read gets an error row and the rest are scored.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..contract import ArtifactMetadata
from ..errors import ArtifactError, InputError
from .baselines import RANDOM_DRAWS, Margin, check_baselines, margins
from .boxes import Box, check_boxes
from .evaluate_scoring import Scoring
from .evaluate_stream import chunks, inputs, progress_bar
from .explainer import Explainer, load_explainer
from .perturbation import PerturbationOptions, jobs_per_image
from .road import DEFAULT_PERCENTILES, ROAD_NOISE, check_percentiles

__all__ = ["BASELINES", "METRICS", "Evaluation", "evaluate"]

METRICS = ("average_drop", "increase_in_confidence", "deletion", "insertion", "road_morf", "road_lerf",
           "road_combined", "pointing_game")  # fmt: skip
ROAD_METRICS = ("road_morf", "road_lerf", "road_combined")  # "road" asks for the three
DEFAULT_METRICS = ("average_drop", "increase_in_confidence", "deletion", "insertion")  # + pointing_game with boxes
BASELINES = ("blur", "mean")  # deletion/insertion substrates
DEFAULT_STEPS = 50
DEFAULT_BATCH_SIZE = 16
POINTING_TOLERANCE = 15.0  # pixels, Zhang et al.'s tolerance
BETTER = {"average_drop": "lower", "increase_in_confidence": "higher", "deletion": "lower", "insertion": "higher",
          "road_morf": "lower", "road_lerf": "higher", "road_combined": "higher",
          "pointing_game": "higher"}  # fmt: skip
TITLES = {"average_drop": "Average Drop", "increase_in_confidence": "Increase in Confidence",
          "deletion": "Deletion AUC", "insertion": "Insertion AUC", "road_morf": "ROAD MoRF",
          "road_lerf": "ROAD LeRF", "road_combined": "ROAD combined", "pointing_game": "Pointing game"}  # fmt: skip


@dataclass(frozen=True, eq=False)
class Evaluation:
    """Per-image scores of one artifact's maps and of the baseline maps; :meth:`summary`, :meth:`margins`."""

    names: list[str]  # one per scored image
    classes: np.ndarray  # [N] the explained class
    scores: dict[str, np.ndarray]  # metric -> [N]; NaN where it does not apply
    curves: dict[str, np.ndarray]  # "deletion"/"insertion"/"road_morf"/"road_lerf" -> [N, points] p_c
    metadata: ArtifactMetadata
    probabilities: np.ndarray  # [N] Y_c: the class's probability on the unperturbed image
    constant_maps: np.ndarray  # [N] bool: the map has one value everywhere (no ranking, no maximum)
    steps: int
    baseline: str  # the deletion/insertion substrate: "blur" or "mean"
    pointing_tolerance: float = POINTING_TOLERANCE
    baseline_scores: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # baseline -> metric -> [N]
    baseline_curves: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # baseline -> curve -> [N, M]
    percentiles: tuple[float, ...] = DEFAULT_PERCENTILES
    errors: dict[str, str] = field(default_factory=dict)  # image name -> why it was not scored
    random_grid: tuple[int, int] | None = None  # the grid the random baseline's noise was drawn on
    counts: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "counts", {m: int(np.isfinite(v).sum()) for m, v in self.scores.items()})

    def summary(self) -> dict[str, float]:
        """Metric -> mean over the images it applies to (NaN when none)."""
        return _means(self.scores)

    def baseline_summary(self) -> dict[str, dict[str, float]]:
        """Baseline -> metric -> mean over the images."""
        return {name: _means(scores) for name, scores in self.baseline_scores.items()}

    def margins(self, *, seed: int = 0) -> list[Margin]:
        """Per metric: the margin over the best baseline, its bootstrap 95% interval and the verdict."""
        return margins(self.scores, self.baseline_scores, BETTER, seed=seed)

    def to_dict(self) -> dict:
        from .evaluate_report import evaluation_dict

        return evaluation_dict(self)

    def to_json(self) -> str:
        """The summary as JSON (NaN written as null)."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def to_markdown(self) -> str:
        """The summary as Markdown: the table (method, baselines, margin, verdict) and how to read it."""
        from .evaluate_report import summary_markdown

        return summary_markdown(self)

    def rows(self) -> list[dict[str, str]]:
        """One CSV row per image (errors last): name, class, probability, constant map, each metric, error."""
        rows = []
        for i, name in enumerate(self.names):
            c = int(self.classes[i])
            row = {
                "image": name,
                "class_index": str(c),
                "class_label": self.metadata.label(c),
                "probability": f"{self.probabilities[i]:.6f}",
                "constant_map": str(bool(self.constant_maps[i])),
            }
            row.update({m: "" if not np.isfinite(v[i]) else f"{v[i]:.6f}" for m, v in self.scores.items()})
            row["error"] = ""
            rows.append(row)
        empty = dict.fromkeys(["class_index", "class_label", "probability", "constant_map", *self.scores], "")
        rows += [{"image": name, **empty, "error": why} for name, why in self.errors.items()]
        return rows

    def write(self, out_dir: str | os.PathLike) -> list[Path]:
        """Write ``evaluation.csv``, ``summary.md``, ``summary.json`` and the curve plots, each atomically."""
        from .evaluate_report import write_evaluation

        return write_evaluation(self, Path(out_dir))


def _means(scores: Mapping[str, np.ndarray]) -> dict[str, float]:
    return {m: float(np.mean(v[np.isfinite(v)])) if np.isfinite(v).any() else math.nan for m, v in scores.items()}


def _check_options(metrics, steps, baseline, batch_size, boxes, tolerance, percentiles, noise):
    if metrics is None:
        chosen = DEFAULT_METRICS + (("pointing_game",) if boxes is not None else ())
    else:
        chosen = (metrics,) if isinstance(metrics, str) else tuple(metrics)
        chosen = tuple(n for m in chosen for n in (ROAD_METRICS if m == "road" else (m,)))
        unknown = [m for m in chosen if m not in METRICS]
        if unknown or not chosen:
            raise InputError(f"unknown metric {(unknown or [chosen])[0]!r}; expected some of: {', '.join(METRICS)}")
        if "pointing_game" in chosen and boxes is None:
            raise InputError("the pointing game needs object boxes (boxes=..., CLI: --boxes CSV)")
        chosen = tuple(m for m in METRICS if m in chosen)  # canonical order, no repeats
    for name, value, least in (("steps", steps, 2), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise InputError(f"{name} must be an integer >= {least}, got {value!r}")
    if baseline not in BASELINES:
        raise InputError(f"unknown substrate (baseline=) {baseline!r}; expected one of: {', '.join(BASELINES)}")
    if not (isinstance(tolerance, (int, float)) and tolerance >= 0):
        raise InputError(f"pointing_tolerance must be a number >= 0, got {tolerance!r}")
    if not (isinstance(noise, (int, float)) and math.isfinite(noise) and noise >= 0):
        raise InputError(f"road_noise must be a number >= 0, got {noise!r}")
    return PerturbationOptions(chosen, int(steps), baseline, int(batch_size), check_percentiles(percentiles),
                               float(noise))  # fmt: skip


def _explainer_of(artifact) -> Explainer:
    explainer = artifact if isinstance(artifact, Explainer) else load_explainer(artifact)
    if not (explainer.metadata.upsample and explainer.metadata.normalize):
        raise ArtifactError(
            f"{explainer.path} returns raw maps (exported with upsample/normalize off); the metrics need maps at "
            "the input size in [0, 1]: export it with the defaults"
        )
    return explainer


def evaluate(
    artifact: Explainer | str | os.PathLike,
    images,
    *,
    metrics: Sequence[str] | None = None,
    steps: int = DEFAULT_STEPS,
    baseline: str = "blur",
    batch_size: int = DEFAULT_BATCH_SIZE,
    boxes: Mapping[str, Sequence[Box]] | Sequence[Sequence[Box]] | None = None,
    class_index=None,
    progress: bool = False,
    names: Sequence[str] | None = None,
    pointing_tolerance: float = POINTING_TOLERANCE,
    baselines: Sequence[str] | None = (),
    random_draws: int = RANDOM_DRAWS,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    road_noise: float = ROAD_NOISE,
) -> Evaluation:
    """Score the artifact's maps of ``images`` (see the module docstring for each definition).

    Args:
        artifact: an artifact file or a loaded :class:`Explainer`.
        images: float32 ``[N, C, H, W]`` already normalized (what an Explainer takes), or
            image files and folders, or :class:`ImageInput` items (decoded in chunks;
            names are the files' relative paths with their extension).
        metrics: some of :data:`METRICS`, ``"road"`` for the three ROAD scores (default: Average Drop,
            Increase in Confidence, deletion, insertion, and the pointing game with ``boxes``; ROAD when asked).
        steps: deletion/insertion steps ``S >= 2`` (curves have ``S + 1`` points).
        baseline: the deletion/insertion substrate, ``"blur"`` or ``"mean"``.
        batch_size: images per artifact call, perturbed images of several images mixed.
        boxes: object boxes ``(x0, y0, x1, y1)`` in input pixels, by image name or one list
            per image; images without boxes get NaN for the pointing game.
        class_index: class-input artifacts only: one class or ``[N]`` (``-1``: the top class).
        progress: show a tqdm bar on stderr.
        names: one per image (default: file names, ``"0"``, ``"1"``, ... for arrays).
        pointing_tolerance: pointing-game tolerance in input pixels.
        baselines: baseline maps scored beside the method's (:data:`~.baselines.BASELINE_MAPS`;
            None: all of them; default: none).
        random_draws: draws of the random baseline per image.
        percentiles: ROAD's percentiles, each in (0, 100).
        road_noise: the standard deviation of ROAD's imputation noise.

    Raises:
        InputError: bad images, options, classes or boxes.
        ArtifactError: the artifact gives no class probabilities or only raw maps.
    """
    options = _check_options(metrics, steps, baseline, batch_size, boxes, pointing_tolerance, percentiles, road_noise)
    chosen_baselines = check_baselines(baselines)
    if isinstance(random_draws, bool) or not isinstance(random_draws, (int, np.integer)) or random_draws < 1:
        raise InputError(f"random_draws must be a positive integer, got {random_draws!r}")
    explainer = _explainer_of(artifact)
    meta = explainer.metadata
    source, names = inputs(images, names, explainer)
    n = len(source)
    if len(names) != n:
        raise InputError(f"got {len(names)} names for {n} images; give one each")
    target = explainer.check_class_index(class_index, n)
    per_image_boxes = check_boxes(boxes, names) if "pointing_game" in options.metrics else None
    runs = 1 + jobs_per_image(options) * (
        1 + len(chosen_baselines) + (random_draws - 1) * ("random" in chosen_baselines)
    )
    parts: list[dict] = []
    errors: dict[str, str] = {}
    grid = None
    position = {name: i for i, name in enumerate(names)}
    scoring = Scoring(explainer, options, chosen_baselines, int(random_draws), per_image_boxes,
                       float(pointing_tolerance))  # fmt: skip
    with progress_bar(n * runs, progress) as bar:
        for chunk_names, array, failed in chunks(source, names, meta):
            errors.update(failed)
            bar.update(len(failed) * runs)
            if array is None:
                continue
            rows = np.array([position[name] for name in chunk_names])
            part, grid = scoring.chunk(array, rows, None if target is None else target[rows], grid, bar)
            parts.append({"names": chunk_names, **part})
    return _assemble(parts, errors, chosen_baselines, meta, options, float(pointing_tolerance), grid)


def _assemble(parts, errors, chosen_baselines, meta, options, tolerance, grid) -> Evaluation:
    if not parts:
        raise InputError(f"no image could be read: {next(iter(errors.values()), 'no images')}")

    def joined(key, index):
        return {m: np.concatenate([p[key][index][m] for p in parts]) for m in parts[0][key][index]}

    return Evaluation(
        names=[name for p in parts for name in p["names"]],
        classes=np.concatenate([p["classes"] for p in parts]),
        scores=joined("method", 0),
        curves=joined("method", 1),
        metadata=meta,
        probabilities=np.concatenate([p["y"] for p in parts]),
        constant_maps=np.concatenate([p["constant"] for p in parts]),
        steps=options.steps,
        baseline=options.substrate,
        pointing_tolerance=tolerance,
        baseline_scores={b: joined(b, 0) for b in chosen_baselines},
        baseline_curves={b: joined(b, 1) for b in chosen_baselines},
        percentiles=options.percentiles,
        errors=errors,
        random_grid=grid,
    )
