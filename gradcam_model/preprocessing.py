"""Where an artifact's preprocessing comes from: the model's own eval transform, resolved once at build time.

torchvision's weights enums carry their eval transform (``ResNet50_Weights.IMAGENET1K_V2
.transforms()``: shorter side 232, bilinear, centre crop 224) and timm models carry a
``pretrained_cfg`` (``crop_pct``, ``interpolation``, ``crop_mode``, mean, std); both are
there without downloading weights. :func:`resolve` turns any of them, or an explicit
:class:`~gradcam_model.contract.Preprocessing`, into the record an artifact carries;
the runtime applies it (:mod:`gradcam_model.runtime.preprocessing`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from .contract import Preprocessing
from .errors import InputError

__all__ = ["Resolved", "resolve", "from_timm_config", "from_torchvision", "torchvision_default", "with_overrides"]

log = logging.getLogger(__name__)

DEFAULT_NOTE = "no preprocessing stated: recorded the default, a stretch to the input size (area); pass preprocess="


@dataclass(frozen=True)
class Resolved:
    """A preprocessing record, the mean and std its source states (None: not stated), and where it came from."""

    preprocessing: Preprocessing
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    source: str


def _checked(prep: Preprocessing, source: str, size: tuple[int, int] | None = None) -> Preprocessing:
    problems = prep.problems()
    if size is not None and prep.resize_size is not None and prep.resize_size < min(size):
        problems.append(f"resize_size {prep.resize_size} is smaller than the {size[0]}x{size[1]} crop")
    if problems:
        raise InputError(f"preprocessing from {source}: {'; '.join(problems)}")
    return prep


def from_timm_config(config: Mapping, source: str = "a timm data config") -> Resolved:
    """A timm data config (``pretrained_cfg`` or ``resolve_data_config``'s result) as a record.

    ``crop_mode`` ``"center"`` (timm's default) keeps the aspect ratio and crops;
    ``"squash"`` stretches then crops. ``"border"`` (pad instead of crop) is refused.
    """
    mode = config.get("crop_mode") or "center"
    if mode not in ("center", "squash"):
        raise InputError(f"{source}: crop_mode {mode!r} is not supported (center or squash); pass preprocess=")
    interpolation = config.get("interpolation") or "bilinear"
    prep = Preprocessing(
        resize="shorter" if mode == "center" else "stretch",
        crop_pct=float(config.get("crop_pct") or 0.875),  # timm's DEFAULT_CROP_PCT when None
        interpolation=str(interpolation),
    )
    mean, std = config.get("mean"), config.get("std")
    return Resolved(
        _checked(prep, source),
        tuple(float(v) for v in mean) if mean is not None else None,
        tuple(float(v) for v in std) if std is not None else None,
        source,
    )


def from_torchvision(transform_or_weights, size: tuple[int, int], source: str | None = None) -> Resolved:
    """A torchvision weights enum member, or its ``transforms()`` (``ImageClassification``), as a record.

    ``resize_size`` is stated for the transform's ``crop_size``; for an artifact whose
    input ``size`` is another, it is scaled with it (232 for 224 becomes 66 for 64).
    """
    transform = transform_or_weights
    if hasattr(transform, "transforms"):
        transform = transform.transforms()
    source = source or f"torchvision {transform_or_weights}"
    for attribute in ("resize_size", "crop_size", "interpolation", "mean", "std"):
        if not hasattr(transform, attribute):
            raise InputError(f"{source} is not a torchvision ImageClassification transform (no {attribute})")
    resize = list(transform.resize_size) if transform.resize_size is not None else None
    if resize is not None and len(resize) != 1:
        raise InputError(f"{source}: resize_size {resize} is not one shorter-side length")
    crop = min(int(v) for v in transform.crop_size)
    side = None
    if resize:
        side = int(resize[0]) if crop == min(size) else round(int(resize[0]) * min(size) / crop)
    prep = Preprocessing(
        resize="shorter" if resize else "stretch",
        resize_size=side,
        interpolation=transform.interpolation.value,  # InterpolationMode: "bilinear", "bicubic", "nearest"
        antialias=bool(getattr(transform, "antialias", True)),
    )
    return Resolved(_checked(prep, source), tuple(transform.mean), tuple(transform.std), source)


def resolve(model, preprocess, size: tuple[int, int]) -> Resolved:
    """The record for ``model`` given ``preprocess``, for inputs of ``size`` ``(H, W)``.

    Args:
        preprocess: a :class:`~gradcam_model.contract.Preprocessing`; a torchvision
            weights enum member or its ``transforms()``; a timm data config (a mapping);
            or None: timm's ``pretrained_cfg`` when the model has one, else the default
            (a stretch), logged once.
    """
    if isinstance(preprocess, Preprocessing):
        return Resolved(_checked(preprocess, "preprocess=", size), None, None, "preprocess=")
    if isinstance(preprocess, Mapping):
        return from_timm_config(preprocess)
    if preprocess is not None:
        return from_torchvision(preprocess, size)
    config = getattr(model, "pretrained_cfg", None)
    if isinstance(config, Mapping) and "crop_pct" in config:
        return from_timm_config(config, f"timm's pretrained_cfg of {type(model).__name__}")
    log.info("%s (e.g. a torchvision weights enum or a timm data config)", DEFAULT_NOTE)
    return Resolved(Preprocessing(), None, None, "the default")


def torchvision_default(arch: str):
    """The default weights enum member of a torchvision architecture name (its eval transform), or None."""
    try:
        import torchvision

        return torchvision.models.get_model_weights(arch).DEFAULT
    except (ImportError, ValueError, KeyError, AttributeError):
        return None


def with_overrides(resolved: Resolved, size: tuple[int, int], **fields) -> Resolved:
    """``resolved`` with fields replaced (None: keep), checked; a stated ``crop_pct`` drops ``resize_size``."""
    from dataclasses import replace

    fields = {key: value for key, value in fields.items() if value is not None}
    if not fields:
        return resolved
    if "crop_pct" in fields or fields.get("resize") == "stretch":
        fields.setdefault("resize_size", None)
    names = ", ".join(sorted(fields))
    prep = _checked(replace(resolved.preprocessing, **fields), f"{resolved.source} with {names} set", size)
    return Resolved(prep, resolved.mean, resolved.std, f"{resolved.source}, {names} set")
